-- The append-only event store: one row per event, never updated or deleted.
--
-- global_position is drawn from events_global_position_seq inside convo_append, under a short global
-- lock, right after the appending transaction's id is assigned. So positions grow with transaction ids,
-- and a reader that only takes rows whose transaction_id is below the oldest running transaction
-- (pg_snapshot_xmin) never skips a row that commits late with a lower position.

CREATE SEQUENCE events_global_position_seq AS bigint CACHE 1;

CREATE TABLE events (
    global_position bigint      NOT NULL DEFAULT nextval('events_global_position_seq') PRIMARY KEY,
    event_id        uuid        NOT NULL,
    tenant_id       text        NOT NULL,
    stream_name     text        NOT NULL,
    stream_category text        NOT NULL GENERATED ALWAYS AS (split_part(stream_name, '-', 1)) STORED,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (tenant_id, stream_name, stream_version),
    CONSTRAINT events_stream_version_positive CHECK (stream_version > 0),
    CONSTRAINT events_event_type_length CHECK (char_length(event_type) BETWEEN 1 AND 200),
    CONSTRAINT events_stream_name_format CHECK (stream_name ~ '^[a-z0-9_]{1,64}-[!-~]{1,200}$'),
    CONSTRAINT events_tenant_format CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$')
);

ALTER SEQUENCE events_global_position_seq OWNED BY events.global_position;

-- readAll for one tenant, and a category (e.g. every messages- stream) of one tenant.
CREATE INDEX events_tenant_position_idx ON events (tenant_id, global_position);
CREATE INDEX events_tenant_category_position_idx ON events (tenant_id, stream_category, global_position);
