"""plaintap: a host agent that shows the HTTP traffic a Linux machine sends and receives,
inside TLS too, attributed to the process that did it (tracepoints + uprobes, CO-RE BPF)."""

__version__ = "0.1.0"
