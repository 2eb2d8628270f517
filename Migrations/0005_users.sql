-- Users of convo, and the System user: the actor of everything the AI does.
--
-- The System user (id 00000000-0000-4000-8000-000000000001, SYSTEM_USER_ID in SharedTypes) is seeded
-- here; the database refuses to delete it or to change its id or role.

CREATE TABLE users (
    id         uuid        PRIMARY KEY,
    email      text        NOT NULL,
    name       text        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('admin', 'agent', 'system')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);

INSERT INTO users (id, email, name, role)
VALUES ('00000000-0000-4000-8000-000000000001', 'system@internal.local', 'System', 'system')
ON CONFLICT (id) DO NOTHING;

CREATE FUNCTION convo_protect_system_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id = '00000000-0000-4000-8000-000000000001' THEN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'the System user cannot be deleted' USING ERRCODE = 'CV005';
        END IF;
        IF NEW.id <> OLD.id OR NEW.role <> OLD.role THEN
            RAISE EXCEPTION 'the System user''s id and role cannot change' USING ERRCODE = 'CV005';
        END IF;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER users_protect_system BEFORE UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION convo_protect_system_user();

CREATE FUNCTION convo_refuse_users_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'users cannot be truncated: the System user must stay' USING ERRCODE = 'CV005';
END
$$;

CREATE TRIGGER users_refuse_truncate BEFORE TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION convo_refuse_users_truncate();
