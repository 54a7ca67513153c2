"""Autoscaling end to end: ramp up, scale in under traffic without losing requests, explain why."""

import threading


from .conftest import wait_for

SLEEPY = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0.1))\n    return 'done'\n"


def invoke(r, name, event=None):
    return r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json=event or {}, timeout=60)


def scaling(r, name):
    return r.http.get(f"{r.api_url}/v1/functions/{name}", timeout=5).json()["scaling"]


def test_ramp_up_then_scale_in_under_traffic_then_to_zero(make_appliance):
    r = make_appliance({"APPLIANCE_STABLE_WINDOW_S": "3", "APPLIANCE_PANIC_WINDOW_S": "1"})
    name = r.deploy({"index.py": SLEEPY}, concurrency=1, max_instances=6, keep_alive_s=2)
    statuses: list[int] = []
    lock = threading.Lock()
    peak = [0]
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.wait(0.05):
            peak[0] = max(peak[0], len(r.instances(name)))

    sampler = threading.Thread(target=sample)
    sampler.start()

    def client(n):
        for _ in range(n):
            code = invoke(r, name).status_code
            with lock:
                statuses.append(code)

    # Ramp up: six clients back to back.
    clients = [threading.Thread(target=client, args=(15,)) for _ in range(6)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(120)
    assert peak[0] >= 3, f"six concurrent clients ran on {peak[0]} instance(s)"
    busy = scaling(r, name)
    assert busy["desired"] is not None and busy["reason"]

    # Scale in while one client keeps calling: every request must still succeed.
    done = threading.Event()

    def steady():
        while not done.is_set():
            code = invoke(r, name, {"sleep": 0.05}).status_code
            with lock:
                statuses.append(code)

    steady_client = threading.Thread(target=steady)
    steady_client.start()
    wait_for(lambda: len(r.instances(name)) <= 2, 30, interval_s=0.1, message="scale-in under light traffic")
    done.set()
    steady_client.join(30)

    # No traffic: down to zero after keep-alive, and the reason says so.
    wait_for(lambda: r.instances(name) == [], 30, interval_s=0.1, message="scale to zero")
    stop_sampling.set()
    sampler.join(5)
    assert statuses and set(statuses) == {200}, f"lost or failed requests: {sorted(set(statuses))}"
    idle = scaling(r, name)
    assert idle["current"] == 0 and idle["desired"] == 0
    assert "scale to zero" in idle["reason"]
