"""The method interface and registry (DomainBed style: one small class per algorithm)."""
from __future__ import annotations

import abc

import torch
from torch import nn

from diffinject.config.schema import ClassifierConfig, ExperimentConfig
from diffinject.core.errors import NonFiniteLoss
from diffinject.nets.classifiers import build_classifier
from diffinject.nets.metrics import all_ranks_finite


class Method(abc.ABC):
    """A training algorithm: owns its networks and optimisers; `update` does one step.

    `index` in `update` is each sample's row in the training set, so a method can keep
    per-sample state. `predict` returns the logits of the network that is evaluated.
    """

    name: str = ""
    in_table: bool = True  # whether experiment drivers list it as a Table 1 method
    needs_synthetic: bool = False  # trained on original + synthetic data (stages 1-3 run first)
    synthesis: str = ""  # the stage-3 kind that makes its synthetic data (stages.kinds.STAGE3_KINDS)

    def __init__(self, cfg: ClassifierConfig, num_classes: int, input_shape: tuple[int, int, int],
                 num_train: int, options: dict | None = None):
        self.cfg = cfg
        self.options = dict(options or {})
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.num_train = num_train
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.setup()

    @classmethod
    def classifier_config(cls, cfg: ExperimentConfig) -> ClassifierConfig:
        """The classifier settings the method trains with: cfg.classifier, unless the method has
        its own regime."""
        return cfg.classifier

    @classmethod
    def stage1_config(cls, cfg: ExperimentConfig) -> ExperimentConfig:
        """The config whose stage 1 (top-K) serves the method: cfg, unless it takes its own top-K."""
        return cfg

    @abc.abstractmethod
    def setup(self) -> None:
        """Create self.nets and self.optimizers."""

    def prepare(self, data, ctx, seed: int) -> None:
        """Work before the first step that needs the training set (e.g. per-sample labels, or
        BiasEnsemble's committee). Runs on every rank; on a resumed run `ctx.resume_state`
        is set and the state comes back through `load_extra_state`."""

    @abc.abstractmethod
    def update(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
        """One training step on a batch; returns scalars to log (at least 'loss')."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits. Uses the unwrapped network: a DDP forward is a collective
        (buffer broadcast), and ranks evaluate shards of different lengths."""
        return unwrap(self.nets["model"])(x)

    def new_classifier(self) -> nn.Module:
        return build_classifier(self.cfg.arch, self.num_classes, self.input_shape,
                                self.cfg.mlp_divide_by_255)

    def adam(self, module: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """Adam at `lr` (default cfg.lr). foreach: one multi-tensor update of all parameters, the same
        arithmetic as the per-parameter loop torch picks on CPU, a quarter less time for the quick run's
        MLPs (bench/classifier_train.py)."""
        return torch.optim.Adam(module.parameters(), lr=lr or self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                foreach=True)

    @staticmethod
    def optimize(optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer], loss: torch.Tensor) -> float:
        """Backward and step (every optimiser in a list: one joint step of models that share
        no parameters), unless the loss is non-finite on any rank (then every rank raises
        together, so none is left waiting in a gradient all-reduce)."""
        value = float(loss.detach())
        if not all_ranks_finite(value, loss.device):
            raise NonFiniteLoss(f"non-finite loss {value}")
        optimizers = optimizer if isinstance(optimizer, list) else [optimizer]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        return value

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> "Method":
        for net in self.nets.values():
            net.to(device, memory_format=memory_format)
        return self

    def wrap(self, wrapper) -> None:
        """Wrap every network (e.g. in DistributedDataParallel); optimisers keep their params."""
        self.nets = {name: wrapper(net) for name, net in self.nets.items()}

    def train(self, mode: bool = True) -> None:
        for net in self.nets.values():
            net.train(mode)

    def extra_state(self) -> dict:
        """Per-method state beyond networks and optimisers, saved in checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"nets": {k: unwrap(v).state_dict() for k, v in self.nets.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for name, net in self.nets.items():
            unwrap(net).load_state_dict(state["nets"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.load_extra_state(state.get("extra", {}))

    def net_states(self) -> dict:
        """Copies of the network weights only (what model selection keeps)."""
        return {k: {n: t.detach().clone() for n, t in unwrap(v).state_dict().items()}
                for k, v in self.nets.items()}

    def load_net_states(self, states: dict) -> None:
        for name, net in self.nets.items():
            unwrap(net).load_state_dict(states[name])


def unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "module", net)
