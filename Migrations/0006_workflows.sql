-- Published workflow definitions, per tenant, versioned. A version is never changed: a conversation pins
-- the version it started with, and publishing makes a new one.

CREATE TABLE workflows (
    tenant_id    text        NOT NULL,
    workflow_id  text        NOT NULL CHECK (workflow_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    version      int         NOT NULL CHECK (version > 0),
    definition   jsonb       NOT NULL,
    checksum     text        NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    published_by text        NOT NULL,
    PRIMARY KEY (tenant_id, workflow_id, version)
);

CREATE FUNCTION convo_refuse_workflow_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'published workflow versions are immutable: % on workflows is refused; publish a new version', TG_OP
        USING ERRCODE = 'CV006';
END
$$;

CREATE TRIGGER workflows_immutable BEFORE UPDATE OR DELETE ON workflows
    FOR EACH ROW EXECUTE FUNCTION convo_refuse_workflow_change();
