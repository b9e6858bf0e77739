"""The app server's RSS while 8 clients each ask N questions (client 0's RSS after each), then after gc and
after a glibc malloc_trim. PYTHONPATH=. python experiments/app-memory/rss.py N [TMPDIR]"""
import ctypes, gc, sys, threading, time
sys.path.insert(0, ".")
from gradio_client import Client
from tests.test_app_service import _ask, _rss_mb, _free_port
from tokenpacker.synthetic.scenes import Scene, SceneObject
from app.runtime import ModelRuntime
from app.settings import AppSettings
from app.ui import ASSETS, CSS, build
from pathlib import Path
import app.ui

trims, release = [], app.ui._release_freed_heap


def timed_release():  # how long the app's trim after each answer takes
    start = time.perf_counter()
    release()
    trims.append(time.perf_counter() - start)


app.ui._release_freed_heap = timed_release
settings = AppSettings(device="cpu", port=_free_port())
runtime = ModelRuntime(settings).start(background=False)
demo = build(runtime).queue(default_concurrency_limit=4, max_size=256)
demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(ASSETS / "examples")], css=CSS, max_file_size="5mb")
url = f"http://127.0.0.1:{settings.port}"
N = int(sys.argv[1])
tmp = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/rss-check"); tmp.mkdir(exist_ok=True)
imgs = []
for i in range(8):
    p = tmp / f"c{i}.png"; Scene(400, 300, (235,235,235), 0, [SceneObject("circle", "red", 200, 150, 120)], i).render().save(p); imgs.append(p)
log = []
def run(i):
    c = Client(url, verbose=False)
    for r in range(N):
        c.predict(api_name="/reset"); _ask(c, f"What color is the circle? ({i},{r})", imgs[i])
        if i == 0: log.append((r, round(_rss_mb())))
ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
print("rss by request of client 0:", log[::5], log[-1])
if trims:
    print(f"the app's trims: {len(trims)}, median {sorted(trims)[len(trims) // 2] * 1e3:.1f} ms, max {max(trims) * 1e3:.1f} ms")
gc.collect(); print("after gc", round(_rss_mb()))
ctypes.CDLL("libc.so.6").malloc_trim(0); print("after malloc_trim", round(_rss_mb()))
demo.close()
