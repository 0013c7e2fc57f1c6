-- What the probe service saw, for the event-bus suites to inspect.
CREATE TABLE attempts (
    position BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    instance TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE handled (
    position BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    instance TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_key TEXT
);

CREATE TABLE asked (
    trigger_id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL
);

CREATE TABLE writes (
    trigger_id TEXT PRIMARY KEY
);
