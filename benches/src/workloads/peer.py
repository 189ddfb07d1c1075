# Python's multiprocessing, measured for the comparison runner (benches/src/workloads/python.rs).
# Reads one command per line on stdin, answers one line on stdout:
#   "ok <seconds>" (time of the timed part only), "ok <json>" (crash), or "err <message>".
# Commands: apply W ITERS | map W N ITERS | payload W N ITERS | queue SIZE N ITERS |
#           queue_mpmc SIZE N ITERS | pipe SIZE ITERS | crash W | version
import json
import multiprocessing as mp
import os
import sys
import time
import concurrent.futures as cf

mp.set_start_method("fork")  # the functions below live in __main__


def noop(x):
    return x + 1


def square(x):
    return x * x


def touch(b):
    return sum(b[::4096]) + len(b)


def crash(_):
    os.abort()


def producer(q, size, n):
    m = b"\x07" * size
    for _ in range(n):
        q.put(m)


def consumer(q, n):
    for _ in range(n):
        q.get()


def echo(c):
    while True:
        try:
            m = c.recv_bytes()
        except EOFError:
            return
        c.send_bytes(m)


pools = {}
pipes = {}


def pool(w):
    if w not in pools:
        pools[w] = mp.Pool(w)
    return pools[w]


def timed(fn, iters, prepare=lambda: None):
    total = 0.0
    for _ in range(iters):
        x = prepare()
        t = time.perf_counter()
        fn(x)
        total += time.perf_counter() - t
    return total


def run(cmd, args):
    if cmd == "version":
        return sys.version.split()[0]
    if cmd == "apply":
        w, iters = args
        p = pool(w)
        return timed(lambda _: [p.apply_async(noop, (i,)).get() for i in range(1)], iters)
    if cmd == "map":
        w, n, iters = args
        p = pool(w)
        return timed(lambda _: p.map(square, range(n)), iters)
    if cmd == "payload":
        w, n, iters = args
        p = pool(w)
        return timed(
            lambda a: p.map(touch, a),
            iters,
            lambda: [bytes(bytearray(b"\x07" * (1 << 20))) for _ in range(n)],
        )
    if cmd == "queue":
        size, n, iters = args

        def one(_):
            q = mp.Queue()
            pr = mp.Process(target=producer, args=(q, size, n))
            pr.start()
            for _ in range(n):
                q.get()
            pr.join()

        return timed(one, iters)
    if cmd == "queue_mpmc":
        size, n, iters = args
        half = n // 2

        def one(_):
            q = mp.Queue()
            ps = [mp.Process(target=producer, args=(q, size, half)) for _ in range(2)]
            ps.append(mp.Process(target=consumer, args=(q, half)))
            for p in ps:
                p.start()
            for _ in range(half):
                q.get()
            for p in ps:
                p.join()

        return timed(one, iters)
    if cmd == "pipe":
        size, iters = args
        if size not in pipes:
            a, b = mp.Pipe()
            pr = mp.Process(target=echo, args=(b,), daemon=True)
            pr.start()
            b.close()
            pipes[size] = a
        a = pipes[size]
        m = b"\x07" * size
        t = time.perf_counter()
        for _ in range(iters):
            a.send_bytes(m)
            a.recv_bytes()
        return time.perf_counter() - t
    if cmd == "crash":
        (w,) = args
        out = {}
        p = mp.Pool(w)
        t = time.perf_counter()
        r = p.apply_async(crash, (0,))
        try:
            r.get(timeout=2.0)
            out["pool"] = "returned?"
        except mp.TimeoutError:
            out["pool"] = "hung: no result and no error after 2 s (the task is lost, get() without a timeout waits forever)"
        except Exception as e:  # noqa: BLE001
            out["pool"] = "raised " + type(e).__name__
        out["pool_s"] = time.perf_counter() - t
        ok = p.apply_async(noop, (1,))
        try:
            ok.get(timeout=2.0)
            out["pool_after"] = "a later task still ran"
        except Exception as e:  # noqa: BLE001
            out["pool_after"] = "a later task failed: " + type(e).__name__
        p.terminate()
        ex = cf.ProcessPoolExecutor(w)
        t = time.perf_counter()
        try:
            ex.submit(crash, 0).result(timeout=10)
            out["executor"] = "returned?"
        except Exception as e:  # noqa: BLE001
            out["executor"] = "raised " + type(e).__name__
        out["executor_s"] = time.perf_counter() - t
        try:
            ex.submit(noop, 1).result(timeout=10)
            out["executor_after"] = "a later task still ran"
        except Exception as e:  # noqa: BLE001
            out["executor_after"] = "a later task failed: " + type(e).__name__ + " (the executor is broken for good)"
        ex.shutdown(wait=False)
        return json.dumps(out)
    raise ValueError("unknown command " + cmd)


def main():
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            res = run(parts[0], [int(x) for x in parts[1:]])
            print("ok", res, flush=True)
        except Exception as e:  # noqa: BLE001
            print("err", type(e).__name__, str(e).replace("\n", " "), flush=True)
    for p in pools.values():
        p.terminate()


if __name__ == "__main__":
    main()
