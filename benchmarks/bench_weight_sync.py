"""Weight sync: seconds to push SmolLM2-135M weights to the vLLM server and have them served, against
the floor of writing the same bytes to disk once, both measured in this run.

    .venv/bin/python benchmarks/bench_weight_sync.py [--repeats 3]
"""

import argparse
import os
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from rbr_rlhf.models import resolve_model
    from rbr_rlhf.rollout.vllm_server import VLLMEngine, VLLMServer

    path = resolve_model(args.model)
    state = {k: v.contiguous().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())

    floors = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeats):
            t = time.perf_counter()
            save_file(state, os.path.join(d, "w.safetensors"))
            with open(os.path.join(d, "w.safetensors"), "rb+") as fh:
                os.fsync(fh.fileno())
            floors.append(time.perf_counter() - t)
    floor = min(floors)

    conv = [[{"role": "user", "content": "Say hello."}]]
    syncs = []
    with VLLMServer(args.model, max_model_len=1024) as server:
        engine = VLLMEngine(server.url, path)
        for r in range(args.repeats):
            state["model.norm.weight"] += 1e-3  # new weights each time
            t = time.perf_counter()
            version = engine.update_weights(state)
            engine.generate(conv, temperature=0.0, max_tokens=1)  # served: the next request sees them
            syncs.append(time.perf_counter() - t)
            assert engine.server_weight_version() == version
    sync = min(syncs)
    print(f"weights: {nbytes / 2**20:.0f} MiB")
    print(f"write to disk once (floor): {floor:.2f} s")
    print(f"push + served (pause, write, load in workers, version, resume, 1-token request): {sync:.2f} s")
    print(f"ratio sync / floor: {sync / floor:.2f}x")


if __name__ == "__main__":
    main()
