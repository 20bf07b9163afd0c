-- pgrelay 0008: names refuse everything that could hide or pass for something else; three
-- more kinds are the relay's own.
--
-- * The name rule (participants, senders, rooms, token subjects) also refuses line and
--   paragraph separators, spaces other than U+0020, default-ignorable code points and U+2800.
-- * The kinds `oversized`, `rooms` and `revoked` are reserved. Only the function behind the
--   kind's CHECK constraint changes, and PostgreSQL does not check stored rows again when that
--   happens, so a database whose rows already use these kinds migrates; the relay serves such
--   a row as kind `message`. (An UPDATE of such a row is checked, so it must change the kind.)
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- Kinds become the SSE `event:` field: framing-safe, and never one of the relay's own events
-- (the stream's opening `position`, `presence`, `reset`, `token_expired`, the stand-in
-- `oversized`, a stream's `rooms` change and `revoked`). src/message.rs has the same list.
CREATE OR REPLACE FUNCTION pgrelay.valid_kind(kind text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT kind ~ '^[A-Za-z0-9_.:-]{1,64}$'
                 AND kind NOT IN ('oversized', 'position', 'presence', 'reset', 'revoked',
                                  'rooms', 'token_expired') $$;

-- One rule for names: 1 to 256 bytes, none of them a control (Cc) or format (Cf) character, a
-- line or paragraph separator (U+2028, U+2029), a space other than U+0020 (Zs), a
-- Default_Ignorable_Code_Point (Unicode 16's DerivedCoreProperties.txt: among others U+034F,
-- the Hangul fillers U+115F, U+1160, U+3164, U+FFA0, the variation selectors and the reserved
-- ignorable ranges) or U+2800 BRAILLE PATTERN BLANK, which renders blank. The ranges are those
-- of REFUSED_IN_NAMES in src/message.rs; tests/suite/trust.rs compares the two rules on every
-- code point. (PostgreSQL text cannot hold U+0000, so the class starts at U+0001.)
CREATE OR REPLACE FUNCTION pgrelay.valid_name(name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT octet_length(name) BETWEEN 1 AND 256
                 AND name !~ '[\x01-\x1f\x7f-\xa0\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]' $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (8) ON CONFLICT DO NOTHING;
