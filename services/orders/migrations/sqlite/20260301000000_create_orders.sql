CREATE TABLE orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    total DOUBLE PRECISION NOT NULL CHECK (total >= 0),
    -- placed → reserved | rejected, as the catalogue answers.
    status TEXT NOT NULL DEFAULT 'placed',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX orders_by_user ON orders (user_id);

CREATE TABLE order_lines (
    order_id BIGINT NOT NULL REFERENCES orders (id),
    product_id BIGINT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
