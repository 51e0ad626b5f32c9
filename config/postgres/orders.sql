-- The table of the example PostgreSQL projection, the sink orders_table of
-- config/projections.yaml and config/compose/jetline.yaml. Jetline creates
-- only its checkpoint table (jetline_checkpoints). docker-compose.yml runs
-- this file when its database is first created.
--
-- To rebuild the projection from the start of the stream: stop Jetline, run
--   TRUNCATE orders;
--   DELETE FROM jetline_checkpoints WHERE sink = 'orders_table';
-- delete the sink's consumer (nats consumer rm ORDERS jetline-orders-orders_table)
-- and start Jetline again.

CREATE TABLE IF NOT EXISTS orders (
  id text PRIMARY KEY,
  customer_id text NOT NULL,
  total_cents bigint NOT NULL CHECK (total_cents >= 0),
  status text NOT NULL,
  tracking_number text,
  created_at timestamptz NOT NULL,
  shipments int NOT NULL DEFAULT 0
);
