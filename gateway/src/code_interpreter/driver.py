# Airlock code interpreter driver: a persistent Python REPL inside the sandbox.
#
#   python3 driver.py run <base64 code> <timeout_s>   client: runs one cell, prints one JSON line
#   python3 driver.py serve                           server: started by the first client
#
# The server keeps one globals dict for the sandbox's life, so variables, imports
# and open files carry from one call to the next (as in OpenAI's containers). It
# listens on a unix socket only the sandbox user can reach. Each cell's stdout and
# stderr are captured at the file-descriptor level (so subprocess output counts
# too); the value of a trailing expression is printed as a REPL would; an
# exception becomes {"name","value","traceback"}; matplotlib figures left open
# and image files written to OUTPUT_DIR during the cell are returned base64.
import base64, json, os, signal, socket, sys, time

BASE = os.environ.get("AIRLOCK_CI_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "airlock-ci")
SOCK = os.path.join(BASE, "repl.sock")
PIDFILE = os.path.join(BASE, "repl.pid")
OUTPUT_DIR = os.environ.get("AIRLOCK_CI_OUTPUT_DIR") or os.path.join(BASE, "outputs")
IMAGE_EXT = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}
MAX_STREAM = 256 * 1024
MAX_IMAGE = 4 * 1024 * 1024


def recv_all(conn):
    chunks = []
    while True:
        b = conn.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def image_state():
    out = {}
    try:
        for name in os.listdir(OUTPUT_DIR):
            p = os.path.join(OUTPUT_DIR, name)
            if os.path.splitext(name)[1].lower() in IMAGE_EXT and os.path.isfile(p):
                st = os.stat(p)
                out[name] = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        pass
    return out


def run_cell(code, env):
    import ast, io, tempfile, traceback
    before = image_state()
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out_f.fileno(), 1); os.dup2(err_f.fileno(), 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)
    error = None
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), env)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), env)
            if value is not None:
                print(repr(value))
    except BaseException as e:  # SystemExit and KeyboardInterrupt (timeout) included
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        # Drop the driver's own frame: the user's code starts at <cell>.
        tb = [tb[0]] + [l for l in tb[1:] if "airlock-ci" not in l and "driver.py" not in l]
        error = {"name": type(e).__name__, "value": str(e), "traceback": "".join(tb)}
    finally:
        try:
            if "matplotlib.pyplot" in sys.modules:
                plt = sys.modules["matplotlib.pyplot"]
                for n in plt.get_fignums():
                    os.makedirs(OUTPUT_DIR, exist_ok=True)
                    plt.figure(n).savefig(os.path.join(OUTPUT_DIR, "figure-%d-%d.png" % (n, time.time_ns())))
                plt.close("all")
        except Exception as e:  # a broken figure must not lose the cell's output
            print("saving figures failed: %r" % (e,), file=sys.stderr)
        sys.stdout.flush(); sys.stderr.flush()
        sys.stdout.close(); sys.stderr.close()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__

    def read(f):
        f.seek(0)
        data = f.read(MAX_STREAM + 1)
        f.close()
        text = data[:MAX_STREAM].decode("utf-8", "replace")
        return text + ("\n[output truncated]\n" if len(data) > MAX_STREAM else "")

    images = []
    after = image_state()
    for name in sorted(after):
        if before.get(name) != after[name] and after[name][1] <= MAX_IMAGE:
            with open(os.path.join(OUTPUT_DIR, name), "rb") as f:
                data = base64.b64encode(f.read()).decode()
            images.append({"name": name, "mime": IMAGE_EXT[os.path.splitext(name)[1].lower()], "data": data})
    return {"stdout": read(out_f), "stderr": read(err_f), "error": error, "images": images}


def serve():
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    os.chdir(os.environ.get("AIRLOCK_CI_WORKDIR") or os.getcwd())
    try:
        os.unlink(SOCK)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    srv.bind(SOCK)
    os.umask(old)
    srv.listen(4)
    with open(PIDFILE, "w") as f:
        f.write(str(os.getpid()))
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    sys.argv = [""]
    while True:
        conn, _ = srv.accept()
        try:
            req = json.loads(recv_all(conn))
            reply = run_cell(req["code"], env)
        except BaseException as e:
            reply = {"stdout": "", "stderr": "", "images": [],
                     "error": {"name": type(e).__name__, "value": str(e), "traceback": ""}}
        try:
            conn.sendall(json.dumps(reply).encode())
        except OSError:
            pass
        conn.close()


def connect(deadline):
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(SOCK)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def server_pid():
    try:
        with open(PIDFILE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def client(code_b64, timeout_s):
    import subprocess
    code = base64.b64decode(code_b64).decode("utf-8")
    os.makedirs(BASE, mode=0o700, exist_ok=True)
    try:
        s = connect(0)
    except OSError:
        subprocess.Popen([sys.executable, "-u", os.path.abspath(__file__), "serve"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
        s = connect(time.monotonic() + 20)
    s.sendall(json.dumps({"code": code}).encode())
    s.shutdown(socket.SHUT_WR)
    s.settimeout(timeout_s)
    try:
        data = recv_all(s)
    except socket.timeout:
        # Interrupt the cell (KeyboardInterrupt keeps the session's state); if the
        # server does not answer soon after, kill it: the next call starts afresh.
        pid = server_pid()
        if pid:
            os.kill(pid, signal.SIGINT)
        s.settimeout(5)
        try:
            data = recv_all(s)
        except socket.timeout:
            if pid:
                os.kill(pid, signal.SIGKILL)
            data = json.dumps({"stdout": "", "stderr": "", "images": [], "error": {
                "name": "TimeoutError", "value": "cell exceeded %ss; the interpreter was restarted and its state lost" % timeout_s,
                "traceback": ""}}).encode()
        else:
            reply = json.loads(data)
            reply["error"] = {"name": "TimeoutError", "value": "cell interrupted after %ss" % timeout_s,
                              "traceback": (reply.get("error") or {}).get("traceback", "")}
            data = json.dumps(reply).encode()
    sys.stdout.write("AIRLOCK-CI-RESULT " + data.decode() + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        client(sys.argv[2], float(sys.argv[3]))
