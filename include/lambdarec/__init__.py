"""lambdarec: a Lambda-architecture real-time e-commerce recommender (the importable core)."""

import os

__version__ = "0.1.0"

# gRPC's fork handlers (on by default in grpcio >= 1.81) restart its poller thread in a forked
# child; when that child closes its file descriptors before exec (subprocess.Popen does), the
# poller fails on the closed epoll fd and the child dies before exec (grpc/grpc#43055). A process
# that had used Milvus (gRPC) then lost subprocesses at random: 17 of 1,000 Popen calls here, and
# once the Java gateway of spark-submit in the tests. lambdarec only forks to exec, the case
# gRPC's own documentation says to run without them. Set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
