"""The kernel side: what the eBPF probes see, and how their records reach the tracker.

- crwatch.bpf.c and record.h: the probes and the wire record they send;
- loader.py: compiles and attaches them (the only module that imports bcc);
- kernel_layout.py: where the fields the device filter reads sit in the running
  kernel's structs, from its BTF (handed to the compiler as cflags);
- wire.py and events.py: the record's Python mirror, decoded into typed Events;
- reader.py: drains the ring buffer into a bounded queue, one poll at a time (the
  tracker runs it on a thread of its own).

May import: the standard library and bcc. Nothing of tracker or api: the tracker
consumes these events, never the other way round."""
