CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    -- The event that caused it: a redelivery finds it and adds nothing.
    event_id TEXT NOT NULL UNIQUE,
    correlation_id TEXT,
    message TEXT NOT NULL,
    -- RFC 3339, UTC, as the API returns it.
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX notifications_by_user ON notifications (user_id, id);
