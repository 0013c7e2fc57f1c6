CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    -- Stored trimmed and lower-cased: one account per address.
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    -- Argon2id, PHC string format (salt and parameters included).
    password_hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
