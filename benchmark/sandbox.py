"""Running a submitted defense in a child process, with a time limit and a memory limit.

`rbench submit` and `rbench verify` build the submitted defense in a child process (one per trained
model, shared by the cells that use it) and reach it only through `SandboxedModel`, which sends
test inputs, never labels, and checks everything that comes back. The child builds from the task
without its test split (`Task.without_test`); certification is asked about the deployed prediction,
and the harness itself compares it with the label. Every metric is computed by the harness from the
per-example outcomes. A call that raises, returns the wrong shape, NaN or probabilities outside
[0, 1], runs past the time limit (the child is killed) or exhausts the memory limit fails its cell,
with the reason, instead of the run.

It is not a security boundary: the child runs as the same user, with the same files (the test data
included) and network; see README, "What the sandbox protects against".
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UsageError
from benchmark.interfaces import Certificate

# Optional parts of the DefendedModel contract an attack or the harness looks for (hasattr).
OPTIONAL_METHODS = ("logits", "bpda_logits", "expected_probs", "certify")
PLAIN_ATTRIBUTES = ("randomized", "decision_draws", "unit")
PROBABILITY_TOLERANCE = 1e-3  # rows of probs must sum to 1 within this
PROBE_INPUTS = 2  # training inputs the contract is checked on right after the build
# The child's own start (libraries, the engine's components) is not the defense's time; a start
# that takes longer than this is a broken installation.
START_SECONDS = 300.0

# Children fork from a server process that has imported the heavy libraries once (about 5 s each
# time otherwise) and has run no torch operation, so no thread pool is forked half-way.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["torch", "scipy.stats", "statsmodels.stats.proportion",
                                   "torchattacks", "benchmark.evaluate"])


@dataclass(frozen=True)
class SandboxLimits:
    seconds: float = 1800.0  # per call to the defense (its build, which trains, included)
    memory_gb: float = 8.0  # the child's data segment (RLIMIT_DATA)


class Sandbox:
    """The child processes of one submitted defense file, one per trained model (cache key)."""

    def __init__(self, plugin: Path, limits: SandboxLimits = SandboxLimits()):
        self.plugin = Path(plugin)
        self.limits = limits
        self.models: dict[str, SandboxedModel] = {}

    def model(self, cell, task, cache_dir: Path, device: torch.device | None = None) -> "SandboxedModel":
        from benchmark.evaluate import build_cache_key, default_device

        key = build_cache_key(cell, task)
        if key not in self.models or not self.models[key].alive:
            self.models[key] = SandboxedModel(self, cell, task, Path(cache_dir),
                                              str(device or default_device()), key)
        return self.models[key]

    def close(self) -> None:
        for model in self.models.values():
            model.close()
        self.models.clear()


class SandboxedModel:
    """The harness's side of a sandboxed defense: the DefendedModel contract, forwarded to the
    child, with each answer checked. It has exactly the optional methods the child's model has."""

    def __init__(self, sandbox: Sandbox, cell, task, cache_dir: Path, device: str, key: str):
        self.who = f"defense '{cell.defense_label}'"
        self.limits = sandbox.limits
        self.num_classes = task.num_classes
        self.connection, child = FORKSERVER.Pipe()
        self.process = FORKSERVER.Process(
            target=serve, daemon=True,
            args=(child, str(sandbox.plugin), cell, task.without_test(), str(cache_dir), device, key,
                  sandbox.limits))
        self.process.start()
        child.close()
        self.alive = True
        try:
            self._start(task)
        except BaseException:
            self.close()
            raise

    def _start(self, task) -> None:
        """Wait for the build, take on the model's optional methods, probe the contract."""
        self._call("start", seconds=START_SECONDS)
        capabilities = self._call("build")
        for name in OPTIONAL_METHODS:
            if name in capabilities["methods"]:
                setattr(self, name, getattr(self, f"_{name}"))
        for name, value in capabilities["attributes"].items():
            setattr(self, name, value)
        probe = task.train.inputs(range(min(PROBE_INPUTS, len(task.train))))
        self.predict(probe)
        self.probs(probe)

    # The contract ------------------------------------------------------------------------------
    def predict(self, xs) -> np.ndarray:
        from benchmark.evaluate import check_predictions

        return check_predictions(self._call("predict", xs), len(xs), self.num_classes, self.who)

    def probs(self, xs) -> np.ndarray:
        return self._check_probabilities(self._call("probs", xs), len(xs), "probs")

    def _expected_probs(self, xs, samples: int) -> np.ndarray:
        return self._check_probabilities(self._call("expected_probs", xs, samples), len(xs),
                                         "expected_probs")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return RemoteLogits.apply(x, self, "logits")

    def _bpda_logits(self, x: torch.Tensor) -> torch.Tensor:
        return RemoteLogits.apply(x, self, "bpda_logits")

    def _certify(self, xs, ys, alpha: float, seed: int) -> list[Certificate]:
        """The child certifies its deployed predictions (it never sees ys); a certificate counts
        as certified only if its prediction is also the label."""
        shown = self.predict(xs)
        certificates = self._call("certify", xs, shown, alpha, seed)
        if (not isinstance(certificates, list) or len(certificates) != len(xs)
                or not all(isinstance(c, Certificate) for c in certificates)):
            raise UsageError(f"{self.who}: certify returned {type(certificates).__name__} "
                             f"{_length(certificates)}; return a list of one "
                             f"benchmark.interfaces.Certificate per input ({len(xs)})")
        return [dataclasses.replace(c, certified=bool(c.certified and c.prediction == int(y)))
                for c, y in zip(certificates, ys)]

    # Transport and checks ----------------------------------------------------------------------
    def _call(self, method: str, *args, seconds: float | None = None):
        if not self.alive:
            raise UsageError(f"{self.who}: its sandbox was stopped after an earlier failure")
        seconds = seconds or self.limits.seconds
        try:
            if method not in ("start", "build"):  # those answers come unasked
                # The child seeds each call from the harness's seeded generator, so a randomized
                # defense answers the same in every run.
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
                self.connection.send((method, seed, args))
            if not self.connection.poll(seconds):
                self.close()
                raise UsageError(f"{self.who}: {method} did not return within {seconds:g} s, the "
                                 f"sandbox's time limit (--time-limit); its process was stopped")
            status, value = self.connection.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.close()
            raise UsageError(f"{self.who}: its process died during {method} (exit code "
                             f"{self.process.exitcode}; -9 is SIGKILL, e.g. the system running out "
                             f"of memory; a native allocation refused under the sandbox's memory "
                             f"limit of {self.limits.memory_gb:g} GB, --memory-limit, can abort "
                             f"it)") from None
        if status == "error":
            if "MemoryError" in value or "can't allocate memory" in value:
                value += (f" (the sandbox's memory limit is {self.limits.memory_gb:g} GB, "
                          f"--memory-limit)")
            raise UsageError(f"{self.who}: {method} raised {value}")
        return value

    def _check_probabilities(self, probabilities, n: int, method: str) -> np.ndarray:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        expected = (n, self.num_classes)
        if probabilities.shape != expected:
            raise UsageError(f"{self.who}: {method} returned shape {probabilities.shape}, expected "
                             f"{expected}: one row of class probabilities per input")
        if not np.isfinite(probabilities).all():
            raise UsageError(f"{self.who}: {method} returned NaN or infinite probabilities")
        if ((probabilities < 0) | (probabilities > 1)).any() or not np.allclose(
                probabilities.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE):
            raise UsageError(f"{self.who}: {method} returned values outside [0, 1] or rows that do "
                             f"not sum to 1; return probabilities (e.g. a softmax), not logits")
        return probabilities

    def check_logits(self, logits: np.ndarray, n: int, method: str) -> np.ndarray:
        expected = (n, self.num_classes)
        if logits.shape != expected:
            raise UsageError(f"{self.who}: {method} returned shape {logits.shape}, expected {expected}")
        if not np.isfinite(logits).all():
            raise UsageError(f"{self.who}: {method} returned NaN or infinite logits")
        return logits

    def close(self) -> None:
        self.alive = False
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.connection.close()


class RemoteLogits(torch.autograd.Function):
    """Differentiable logits computed in the child: the forward pass keeps its graph there, and the
    backward pass sends the output gradient over and gets the input gradient back, so white-box
    attacks run unchanged (and a randomized surrogate is differentiated through its own draw)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, model: SandboxedModel, method: str) -> torch.Tensor:
        ctx.model, ctx.method = model, method
        array = x.detach().cpu().numpy()
        logits = model._call(method, array, ctx.needs_input_grad[0])
        return torch.as_tensor(model.check_logits(np.asarray(logits), len(array), method),
                               device=x.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        gradient = ctx.model._call("backward", ctx.method, grad_output.detach().cpu().numpy())
        return torch.as_tensor(gradient, device=grad_output.device), None, None


def _length(value) -> str:
    return f"of length {len(value)}" if hasattr(value, "__len__") else ""


# The child ---------------------------------------------------------------------------------------
def serve(connection, plugin: str, cell, task, cache_dir: str, device: str, key: str,
          limits: SandboxLimits) -> None:
    """Build the defense and answer calls until the harness closes the pipe. RLIMIT_DATA, not
    RLIMIT_AS: it caps the memory the process writes without counting the address space CUDA
    reserves."""
    memory = int(limits.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    from benchmark.evaluate import build_defended
    from benchmark.registry import load_plugin_file, load_plugins
    from benchmark.train import deterministic_torch, set_seed

    deterministic_torch()
    load_plugins()
    connection.send(("ok", None))  # started: the time limit runs from here
    graphs: dict[str, tuple] = {}
    try:
        load_plugin_file(plugin)
        model = build_defended(cell, task, Path(cache_dir), torch.device(device), key)
        answer = ("ok", {"methods": [m for m in OPTIONAL_METHODS if callable(getattr(model, m, None))],
                         "attributes": {a: getattr(model, a) for a in PLAIN_ATTRIBUTES
                                        if isinstance(getattr(model, a, None), (bool, int, float, str))}})
    except BaseException as error:  # the build's failure is the answer
        connection.send(("error", _describe(error)))
        return
    connection.send(answer)
    while True:
        try:
            method, seed, args = connection.recv()
        except EOFError:  # the harness is done (or gone)
            return
        try:
            set_seed(seed)
            connection.send(("ok", _answer(model, graphs, method, args)))
        except BaseException as error:
            connection.send(("error", _describe(error)))


def _answer(model, graphs: dict, method: str, args: tuple):
    if method in ("logits", "bpda_logits"):
        array, keep_graph = args
        x = torch.tensor(array, requires_grad=keep_graph)
        with torch.set_grad_enabled(keep_graph):
            logits = getattr(model, method)(x)
        if keep_graph:
            graphs[method] = (x, logits)
        return logits.detach().cpu().numpy()
    if method == "backward":
        name, gradient = args
        x, logits = graphs.pop(name)
        return torch.autograd.grad(logits, x, torch.as_tensor(gradient, device=logits.device))[0].cpu().numpy()
    result = getattr(model, method)(*args)
    return result if method == "certify" else np.asarray(result)


def _describe(error: BaseException) -> str:
    """The error and where in the defense's code it happened."""
    if isinstance(error, UsageError):  # the harness's own checks, already worded for the user
        return str(error)
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"
