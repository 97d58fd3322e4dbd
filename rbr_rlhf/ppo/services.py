"""The run's services (rank 0): the rollout engine and the grader service, with their lifetimes.

Each is started here as a child process (or in-process, for the transformers engine) or connected to at
a URL the recipe gives. ``step_with_recovery`` redoes a PPO step after the rollout server died.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import TrainConfig


class Services:
    """The rollout engine and the RBR scorer, started here or connected to (rank 0; on other ranks both
    stay None). A context manager: leaving it stops whatever it started::

        with Services(cfg, rules, policy_path) as services:
            services.start_rollout()      # the vLLM server (or the in-process transformers engine)
            ...                           # assets that write through services.engine
            services.start_grader()       # the grader service, which needs the RBR weights
    """

    def __init__(self, cfg: TrainConfig, rules, policy_path: str):
        self.cfg, self.rules, self.policy_path = cfg, rules, policy_path
        self.grader_spec = cfg.rbr.grader
        self.weights_path = cfg.rbr.weights if cfg.rbr.enabled else None
        self.logs = Path(cfg.run_dir) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rollout_server = self.grader_process = None
        self.engine = self.rbr = None

    def start_grader(self) -> None:
        if self.cfg.rbr.enabled:
            from ..service.client import GraderClient

            url = self.cfg.rbr.service_url
            if not url:
                from ..service.server import GraderProcess

                print("[services] starting the grader service", flush=True)
                self.grader_process = GraderProcess(self.cfg.rbr.rules, self.grader_spec, self.weights_path,
                                                    log_path=self.logs / "grader.log").start()
                url = self.grader_process.url
            self.rbr = GraderClient(url, token=os.environ.get("RBR_GRADER_TOKEN"))

    def start_rollout(self) -> None:
        r = self.cfg.rollout
        if r.engine == "transformers":
            from ..rollout.hf_engine import TransformersEngine

            self.engine = TransformersEngine(self.policy_path)
            return
        from ..rollout.vllm_server import VLLMEngine, VLLMServer
        from ..rollout.weight_sync import make_transport, server_launch_transfer
        import torch

        url = r.url
        if not url:
            print("[services] starting the vLLM rollout server", flush=True)
            self.rollout_server = VLLMServer(self.policy_path, max_model_len=r.max_model_len, kv_cache_gib=r.kv_cache_gib,
                                             log_path=str(self.logs / "rollout.log"),
                                             weight_transfer=server_launch_transfer(r.weight_sync, torch.cuda.is_available())).start()
            url = self.rollout_server.url
        # Our own server shares this host: the transport's RAM directory. A server given by URL may be on
        # another node: the run directory, which a cluster job keeps on the shared filesystem.
        sync_dir = None if self.rollout_server is not None else str(Path(self.cfg.run_dir) / "weight_sync")
        transport = make_transport(r, url, self_started=self.rollout_server is not None, sync_dir=sync_dir)
        self.engine = VLLMEngine(url, self.policy_path, transport=transport)

    def restart_rollout(self) -> bool:
        """After the rollout server died: start a new one (only if we own it). Returns whether we did."""
        if self.rollout_server is None:
            return False
        print(f"[services] the rollout server died; its log ends with:\n{self.rollout_server.log_tail(10)}", flush=True)
        self.rollout_server.stop()
        self.engine.close()
        self.start_rollout()
        return True

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
        for proc in (self.rollout_server, self.grader_process):
            if proc is not None:
                proc.stop()


def step_with_recovery(trainer, services: Services) -> dict:
    """One PPO step; if the rollout server died, restart it, re-push the weights and redo the step from
    the same prompts. Anything else (or a second failure) stops the run with the error."""
    from ..rollout.vllm_server import ServerError

    state = trainer.prompts.state_dict()
    updates = trainer.global_step
    try:
        return trainer.train_step()
    except ServerError as e:
        if trainer.rank != 0:
            raise
        step = trainer.step + 1
        if trainer.world > 1:  # the other ranks wait in this step's collectives: no redo, a clear stop
            raise ServerError(f"rollout failed in step {step} of a {trainer.world}-rank run ({e}); restart the run "
                              "with resume=auto to continue from the last whole checkpoint") from e
        if trainer.global_step != updates:
            # The policy was already updated when the weight sync failed: redoing the step would apply a
            # second update for the same batch. Stop instead; the last checkpoint is before this step.
            raise ServerError(f"the rollout server failed during the weight sync of step {step}, after the policy "
                              f"update ({e}); restart with resume=auto to redo step {step} from the last whole "
                              "checkpoint") from e
        if not services.restart_rollout():
            raise ServerError(f"rollout failed in step {step} and the rollout server at {trainer.cfg.rollout.url} is "
                              f"not ours to restart ({e}); restart it, then resume with resume=auto") from e
        print(f"[recover] rollout failed ({e}); restarted the server, re-syncing weights and redoing step "
              f"{step}", flush=True)
        trainer.prompts.load_state_dict(state)
        # Push the current weights again under the current version number (the new server starts at 0).
        trainer.resync_weights(engine=services.engine)
        return trainer.train_step()
