-- The session's trace (issue 17): the W3C traceparent of the first run's root span. A run
-- resumed later (another brain, a restart) joins the same trace as a child of that span, so a
-- session is one trace however many runs it takes. NULL while tracing was off.
ALTER TABLE sessions ADD COLUMN trace_parent TEXT;
