CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    -- The event that caused it: a redelivery finds it and adds nothing.
    event_id TEXT NOT NULL UNIQUE,
    correlation_id TEXT,
    message TEXT NOT NULL,
    -- RFC 3339, UTC, as the API returns it.
    created_at TEXT NOT NULL
        DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
);

CREATE INDEX notifications_by_user ON notifications (user_id, id);
