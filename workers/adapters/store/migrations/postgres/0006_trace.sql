-- 0006: the W3C trace context of each saga (SPEC §12), written when the saga is created and
-- never changed: the trace id, the span id of the saga's own span, the caller's span it hangs
-- from and the caller's tracestate, as the tracing adapter encodes them (workers/adapters/
-- tracing.py). NULL for sagas created before this migration (they get a trace derived from
-- their id).

ALTER TABLE {schema}.saga_states ADD COLUMN trace_context TEXT;
