"""Pretrained model states: a hub model at a revision, from model.local_root or the hub, in model.dtype."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from msa_bench.models.build import load_model, load_tokenizer, save_model, trusts_remote_code
from msa_bench.models.sources import model_fingerprint, resolve_model_dir
from msa_bench.pipeline.disk_space import require_space_for_states, stored_parameter_count
from msa_bench.pipeline.refs import ModelRef

log = logging.getLogger("msa_bench.pipeline")


class HubModels:
    """Hub model states (a mixin of Pipeline)."""

    def hub_model(self, hub_id: str, revision: str) -> ModelRef:
        """A pretrained model state: `hub_id` at `revision`, from model.local_root or the hub, stored in model.dtype
        (a copy is cached when the hub stores another dtype: arithmetic needs every state in one dtype)."""
        if (hub_id, revision) not in self._hub_models:
            path = resolve_model_dir(hub_id, revision, self.cfg.model.local_root)
            ref = ModelRef(path, f"hub/{hub_id}@{revision}/{model_fingerprint(path)}", f"{hub_id}@{revision}")
            self._hub_models[(hub_id, revision)] = self._in_model_dtype(ref)
        return self._hub_models[(hub_id, revision)]

    def _in_model_dtype(self, ref: ModelRef) -> ModelRef:
        config = json.loads((ref.path / "config.json").read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
        wanted = self.cfg.model.dtype
        if stored is None or stored == wanted:
            return ref

        def build(out: Path) -> dict:
            n_parameters = stored_parameter_count(ref.path)
            require_space_for_states(
                self.store.root, f"the {wanted} copy of {ref.label}", n_parameters, wanted
            )
            log.info("converting %s from %s to %s", ref.label, stored, wanted)
            trusted = trusts_remote_code(self.cfg.model)
            model = load_model(ref.path, "cpu", wanted, trust_remote_code=trusted)
            save_model(model, load_tokenizer(ref.path, trust_remote_code=trusted), out)
            return {}

        artifact = self.store.get_or_build("hub_model", {"model": ref.key, "dtype": wanted}, build)
        return ModelRef.in_artifact(artifact, ref.label)
