"""The kernel side: what the eBPF probes see, and how their records reach the tracker.

- crwatch.bpf.c and record.h: the probes and the wire record they send;
- loader.py: compiles and attaches them (the only module that imports bcc);
- wire.py and events.py: the record's Python mirror, decoded into typed Events;
- reader.py: the thread that drains the ring buffer into a bounded queue.

May import: the standard library and bcc. Nothing of tracker or api: the tracker
consumes these events, never the other way round."""
