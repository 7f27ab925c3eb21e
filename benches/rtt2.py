# 64-byte ping-pong on one loopback TCP connection, echo in a forked process (the
# machine's round-trip floor; docs/performance.md).
import socket, time, os
srv = socket.create_server(("127.0.0.1", 0)); port = srv.getsockname()[1]
if os.fork() == 0:
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (m := c.recv(64)): c.sendall(m)
    os._exit(0)
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, t = 20000, []
for _ in range(n):
    a = time.perf_counter(); s.sendall(b"x" * 64); s.recv(64); t.append(time.perf_counter() - a)
t.sort(); print(f"{n / sum(t):.0f} round trips/s, p50 {t[n // 2] * 1e6:.0f} us, p99 {t[n * 99 // 100] * 1e6:.0f} us")
