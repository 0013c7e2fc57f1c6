-- Units on hand, and the reservations orders made against them.
ALTER TABLE products ADD COLUMN stock BIGINT NOT NULL DEFAULT 0 CHECK (stock >= 0);

-- One row per order seen: a redelivered `order.placed` finds it and does
-- nothing.
CREATE TABLE order_reservations (
    order_id BIGINT PRIMARY KEY,
    reserved BOOLEAN NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reserved_lines (
    order_id BIGINT NOT NULL REFERENCES order_reservations (order_id),
    product_id BIGINT NOT NULL REFERENCES products (id),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
