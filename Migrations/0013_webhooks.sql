-- Webhooks: a tenant's endpoints, and each message convo owes them. An endpoint follows the event store
-- from its own checkpoint; the events it wants become deliveries in the same statement that moves the
-- checkpoint, so a crash never loses one. One process sends for an endpoint at a time: the one holding
-- the advisory lock (class 'WEBH', object lock_key) on the session that writes its rows.

CREATE TABLE webhook_endpoints (
    tenant_id       text        NOT NULL REFERENCES tenants (id),
    id              text        NOT NULL CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    lock_key        integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    url             text        NOT NULL,
    event_types     text[]      NOT NULL CHECK (cardinality(event_types) > 0),
    -- [{"secret": "whsec_…", "retiresAt": null | "…"}], the current one first; a rotated-out one signs
    -- beside it until it retires.
    secrets         jsonb       NOT NULL,
    config_version  bigint      NOT NULL DEFAULT 1,
    -- The global position up to which the events were turned into deliveries.
    checkpoint      bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    disabled_reason text,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE webhook_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    endpoint_id     text        NOT NULL,
    event_position  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    conversation_id text        NOT NULL,
    -- 'event': made when the sender read the event; 'redelivery': asked for by a person.
    origin          text        NOT NULL CHECK (origin IN ('event', 'redelivery')),
    -- 'requested': a redelivery no sender has picked up yet; 'pending': owed; 'delivered': a 2xx came back.
    status          text        NOT NULL CHECK (status IN ('requested', 'pending', 'delivered')),
    -- [{"at", "statusCode", "latencyMs", "error", "instance"}], oldest first.
    attempts        jsonb       NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);

-- The deliveries API pages newest first; a sender loads what it still owes in event order.
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (tenant_id, endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_owed ON webhook_deliveries (tenant_id, endpoint_id, event_position) WHERE status <> 'delivered';
CREATE INDEX webhook_deliveries_delivered_at ON webhook_deliveries (delivered_at) WHERE status = 'delivered';
