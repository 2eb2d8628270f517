-- convo_append: append events to one stream with an expected version, in one round trip.
--
-- p_expected: -1 any, -2 the stream must exist, 0 the stream must not exist, n > 0 the stream's
-- version must be exactly n.
-- Errors: CV001 wrong expected version (DETAIL: the actual version), CV002 an event id already stored
-- at another place (DETAIL: the id), CV004 bad call.
-- An append whose event ids are all stored already, in this stream and in this order, returns the
-- stored rows with duplicate = true and writes nothing.

CREATE FUNCTION convo_append(
    p_tenant   text,
    p_stream   text,
    p_expected bigint,
    p_ids      uuid[],
    p_types    text[],
    p_data     jsonb[],
    p_metadata jsonb[]
) RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, recorded_at timestamptz, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_count     int := coalesce(cardinality(p_ids), 0);
    v_current   bigint;
    v_stored    int;
    v_positions bigint[];
BEGIN
    IF v_count = 0 OR cardinality(p_types) <> v_count OR cardinality(p_data) <> v_count
       OR cardinality(p_metadata) <> v_count THEN
        RAISE EXCEPTION 'convo_append needs as many ids, types, data and metadata as events, at least one'
            USING ERRCODE = 'CV004';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        -- Positions must be drawn right after the transaction id is assigned; see below.
        RAISE EXCEPTION 'convo_append must be the first write of its transaction' USING ERRCODE = 'CV004';
    END IF;

    -- One appender per stream at a time. An advisory lock assigns no transaction id.
    PERFORM pg_advisory_xact_lock(1668183670, hashtext(p_tenant || '/' || p_stream));

    -- Idempotency: a retried append finds its events already stored.
    SELECT count(*) INTO v_stored FROM events e WHERE e.event_id = ANY (p_ids);
    IF v_stored > 0 THEN
        IF v_stored = v_count AND NOT EXISTS (
            SELECT 1
            FROM unnest(p_ids) WITH ORDINALITY AS i (id, n)
            LEFT JOIN events e ON e.event_id = i.id
            WHERE e.event_id IS NULL OR e.tenant_id <> p_tenant OR e.stream_name <> p_stream
               OR e.stream_version <> (SELECT min(f.stream_version) FROM events f WHERE f.event_id = ANY (p_ids)) + i.n - 1
        ) THEN
            RETURN QUERY
                SELECT e.event_id, e.stream_version, e.global_position, e.recorded_at, true
                FROM events e WHERE e.event_id = ANY (p_ids) ORDER BY e.stream_version;
            RETURN;
        END IF;
        RAISE EXCEPTION 'an event id of this append is already stored at another place'
            USING ERRCODE = 'CV002',
                  DETAIL = (SELECT e.event_id::text FROM events e WHERE e.event_id = ANY (p_ids) LIMIT 1);
    END IF;

    SELECT coalesce(max(e.stream_version), 0) INTO v_current
    FROM events e WHERE e.tenant_id = p_tenant AND e.stream_name = p_stream;
    IF (p_expected = -2 AND v_current = 0) OR (p_expected >= 0 AND p_expected <> v_current) THEN
        RAISE EXCEPTION 'wrong expected version' USING ERRCODE = 'CV001', DETAIL = v_current::text;
    END IF;

    -- Draw positions in transaction-id order: assign this transaction's id and its positions under one
    -- short global lock (session level, so it is not held until commit). Readers rely on it.
    PERFORM pg_advisory_lock(1668183670);
    PERFORM pg_current_xact_id();
    v_positions := ARRAY(SELECT nextval('events_global_position_seq') FROM generate_series(1, v_count));
    PERFORM pg_advisory_unlock(1668183670);

    RETURN QUERY
        INSERT INTO events AS e (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata)
        SELECT v_positions[i.n], i.id, p_tenant, p_stream, v_current + i.n, i.type, i.data, i.metadata
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS i (id, type, data, metadata, n)
        RETURNING e.event_id, e.stream_version, e.global_position, e.recorded_at, false;
END
$$;
