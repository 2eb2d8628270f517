-- convo_append, faster: the same contract as 0003 with less work on the common path.
--
-- * The idempotency check moves off the common path: the insert skips event ids already stored
--   (ON CONFLICT DO NOTHING on events_event_id_key), and only when it inserted fewer rows than asked,
--   or when the expected version does not match, does the function look for a retried append.
-- * Locks, the transaction id and positions are taken with plain assignments, which PL/pgSQL evaluates
--   without starting an executor, instead of PERFORM and ARRAY(SELECT …).
--
-- Errors, as before: CV001 wrong expected version (DETAIL: the actual version), CV002 an event id already
-- stored at another place (DETAIL: the id), CV004 bad call.

CREATE OR REPLACE FUNCTION convo_append(
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
    v_positions bigint[] := '{}';
    v_inserted  bigint;
    v_xid       xid8;
    v_ignored   text;
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
    v_ignored := pg_advisory_xact_lock(1668183670, hashtext(p_tenant || '/' || p_stream))::text;

    SELECT coalesce(max(e.stream_version), 0) INTO v_current
    FROM events e WHERE e.tenant_id = p_tenant AND e.stream_name = p_stream;
    IF (p_expected = -2 AND v_current = 0) OR (p_expected >= 0 AND p_expected <> v_current) THEN
        IF convo_append_is_stored(p_tenant, p_stream, p_ids) THEN
            RETURN QUERY
                SELECT e.event_id, e.stream_version, e.global_position, e.recorded_at, true
                FROM events e WHERE e.event_id = ANY (p_ids) ORDER BY e.stream_version;
            RETURN;
        END IF;
        RAISE EXCEPTION 'wrong expected version' USING ERRCODE = 'CV001', DETAIL = v_current::text;
    END IF;

    -- Draw positions in transaction-id order: assign this transaction's id and its positions under one
    -- short global lock (session level, so it is not held until commit). Readers rely on it.
    v_ignored := pg_advisory_lock(1668183670)::text;
    v_xid := pg_current_xact_id();
    FOR i IN 1 .. v_count LOOP
        v_positions[i] := nextval('events_global_position_seq');
    END LOOP;
    v_ignored := pg_advisory_unlock(1668183670)::text;

    RETURN QUERY
        INSERT INTO events AS e (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata)
        SELECT v_positions[i.n], i.id, p_tenant, p_stream, v_current + i.n, i.type, i.data, i.metadata
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS i (id, type, data, metadata, n)
        ON CONFLICT ON CONSTRAINT events_event_id_key DO NOTHING
        RETURNING e.event_id, e.stream_version, e.global_position, e.recorded_at, false;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted < v_count THEN
        -- Some ids are stored already. Only a retry of a whole append (all ids, in this stream, in order)
        -- is answered with the stored rows, and only when this call inserted none.
        IF v_inserted = 0 AND convo_append_is_stored(p_tenant, p_stream, p_ids) THEN
            RETURN QUERY
                SELECT e.event_id, e.stream_version, e.global_position, e.recorded_at, true
                FROM events e WHERE e.event_id = ANY (p_ids) ORDER BY e.stream_version;
            RETURN;
        END IF;
        RAISE EXCEPTION 'an event id of this append is already stored at another place'
            USING ERRCODE = 'CV002',
                  DETAIL = (SELECT e.event_id::text FROM events e
                            WHERE e.event_id = ANY (p_ids) AND (e.tenant_id <> p_tenant OR e.stream_name <> p_stream
                                                                OR e.global_position <> ALL (v_positions))
                            LIMIT 1);
    END IF;
END
$$;

-- Whether every id is stored in this stream, consecutively and in the order given.
CREATE FUNCTION convo_append_is_stored(p_tenant text, p_stream text, p_ids uuid[]) RETURNS boolean
LANGUAGE sql STABLE AS $$
    WITH stored AS (
        SELECT i.n, e.tenant_id, e.stream_name, e.stream_version
        FROM unnest(p_ids) WITH ORDINALITY AS i (id, n)
        LEFT JOIN events e ON e.event_id = i.id
    )
    -- An id not stored joins to NULLs: coalesce makes it count as a mismatch (bool_and skips NULLs).
    SELECT coalesce(bool_and(coalesce(s.tenant_id = p_tenant AND s.stream_name = p_stream
                                      AND s.stream_version = (SELECT min(t.stream_version) FROM stored t) + s.n - 1, false)), false)
    FROM stored s
$$;
