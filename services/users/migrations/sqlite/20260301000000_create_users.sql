CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Stored trimmed and lower-cased: one account per address.
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    -- Argon2id, PHC string format (salt and parameters included).
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
