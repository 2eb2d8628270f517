-- Visitors' data keys (see PersonalDataVault): each wrapped by a master key named by its id. A visitor is
-- forgotten by destroying their keys: `wrapped` and `master_key_id` become NULL and `erased_at` says when;
-- the row stays, so a sealed event always finds its key's fate. A visitor who comes back after being
-- forgotten gets the next generation.
CREATE TABLE personal_data_keys (
    tenant_id     text        NOT NULL,
    subject       text        NOT NULL,
    generation    int         NOT NULL CHECK (generation > 0),
    master_key_id text,
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    erased_at     timestamptz,
    PRIMARY KEY (tenant_id, subject, generation),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL) AND (wrapped IS NULL) = (erased_at IS NOT NULL))
);

-- Rotation finds the keys still wrapped by an old master key.
CREATE INDEX personal_data_keys_master_idx ON personal_data_keys (master_key_id) WHERE wrapped IS NOT NULL;

-- A destroyed key stays destroyed, and no key row is ever removed.
CREATE FUNCTION convo_personal_data_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'personal_data_keys rows are never deleted; destroy a key by clearing it' USING ERRCODE = 'CV005';
    END IF;
    IF OLD.wrapped IS NULL AND NEW.wrapped IS NOT NULL THEN
        RAISE EXCEPTION 'a destroyed data key cannot come back' USING ERRCODE = 'CV005';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER personal_data_keys_guard BEFORE UPDATE OR DELETE ON personal_data_keys
    FOR EACH ROW EXECUTE FUNCTION convo_personal_data_keys_guard();
