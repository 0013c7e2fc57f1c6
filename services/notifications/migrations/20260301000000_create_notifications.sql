CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    -- The event that caused it: a redelivery finds it and adds nothing.
    event_id TEXT NOT NULL UNIQUE,
    correlation_id TEXT,
    message TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX notifications_by_user ON notifications (user_id, id);
