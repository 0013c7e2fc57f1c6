-- What the probe service saw, for the event-bus suites to inspect.
CREATE TABLE attempts (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    instance TEXT NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE handled (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
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
