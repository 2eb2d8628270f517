-- convo_append_many (0010) that also stores the data keys made for its appends' new visitors (see
-- PersonalDataVault), in the same transaction: a new visitor's key and the first events sealed with it are
-- committed, or lost, together, and a batch holding a new visitor costs one commit instead of two. The
-- keys come sorted by tenant and visitor, the order every writer inserts keys in.
--
-- The events are written first (convo_append_many must be its transaction's first write: its positions
-- come from the transaction's id), then the keys. When another writer stored a key for one of the visitors
-- first, the events were sealed with a key that lost: the call fails with SQLSTATE CV007 and nothing of it
-- is written; the caller reads the stored key and seals again.
CREATE FUNCTION convo_append_many_keyed(
    p_key_tenants     text[],
    p_key_subjects    text[],
    p_key_generations bigint[],
    p_key_masters     text[],
    p_key_wrapped     bytea[],
    p_tenants         text[],
    p_streams         text[],
    p_expected        bigint[],
    p_counts          int[],
    p_ids             uuid[],
    p_types           text[],
    p_data            jsonb[],
    p_metadata        jsonb[]
) RETURNS TABLE (item int, event_id uuid, stream_version bigint, global_position bigint, recorded_at timestamptz,
                 duplicate boolean, error text, actual bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_stored int;
BEGIN
    RETURN QUERY SELECT * FROM convo_append_many(p_tenants, p_streams, p_expected, p_counts, p_ids, p_types, p_data, p_metadata);
    INSERT INTO personal_data_keys (tenant_id, subject, generation, master_key_id, wrapped)
    SELECT k.t, k.s, k.g, k.m, k.w
    FROM unnest(p_key_tenants, p_key_subjects, p_key_generations, p_key_masters, p_key_wrapped) WITH ORDINALITY AS k (t, s, g, m, w, n)
    ORDER BY k.n
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_stored = ROW_COUNT;
    IF v_stored < coalesce(cardinality(p_key_tenants), 0) THEN
        RAISE EXCEPTION 'a data key of this append was stored by another writer first' USING ERRCODE = 'CV007';
    END IF;
END
$$;
