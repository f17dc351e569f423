"""The models the API serves: the champion and, when the mode needs one, the challenger, from
local bundle folders or from the registry's aliases, each with its own prediction worker.

`reload` looks again (the registry's aliases, or the local folders' bundles) and swaps in what
changed: the new model is loaded and warmed up first, then takes new requests, while the old
one finishes the requests it already has. No request fails during a swap.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from rakuten_classifier import registry
from rakuten_classifier.bundle import MANIFEST_JSON, Bundle, load_bundle
from rakuten_classifier.config import logger
from rakuten_classifier.files import read_json
from rakuten_classifier.serve.predictor import Predictor
from rakuten_classifier.serve.settings import Settings, SettingsError
from rakuten_classifier.serve.telemetry import Metrics

CHAMPION, CHALLENGER = registry.CHAMPION, registry.CHALLENGER


@dataclass(frozen=True)
class Source:
    """Where a variant's bundle comes from: a folder, or a registry version."""

    path: Path
    registry_version: str | None = None

    def describe(self) -> str:
        if self.registry_version is None:
            return str(self.path)
        return f"registry version {self.registry_version}"


@dataclass
class ServedModel:
    variant: str
    bundle: Bundle
    predictor: Predictor
    source: Source

    @property
    def version(self) -> str:
        return self.bundle.version

    def describe(self) -> dict[str, str | None]:
        return {
            "variant": self.variant,
            "model_version": self.version,
            "registry_version": self.source.registry_version,
            "source": self.source.describe(),
        }


def challenger_share(key: str) -> float:
    """Where a product falls in [0, 1): the same product always falls at the same place, so
    with A/B testing it always gets the same variant."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)


class ModelSet:
    def __init__(
        self, settings: Settings, metrics: Metrics, given: dict[str, Bundle] | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.given = given or {}  # bundles handed in (tests, embedding): no source to look at
        self.models: dict[str, ServedModel] = {}
        self._lock = asyncio.Lock()  # one reload at a time

    @property
    def champion(self) -> ServedModel:
        return self.models[CHAMPION]

    @property
    def challenger(self) -> ServedModel | None:
        return self.models.get(CHALLENGER) if self.settings.mode != "off" else None

    @property
    def running(self) -> bool:
        return CHAMPION in self.models and self.champion.predictor.running

    def route(self, key: str) -> ServedModel:
        """The model that answers a product: in `ab` mode a stable share of products (by the
        hash of `key`) goes to the challenger; otherwise the champion."""
        challenger = self.challenger
        if (
            self.settings.mode == "ab"
            and challenger is not None
            and challenger_share(key) < self.settings.challenger_share
        ):
            return challenger
        return self.champion

    # --- loading ------------------------------------------------------------------------------

    def _registry_sources(self) -> dict[str, Source]:
        cache = self.settings.model_cache or registry.default_cache()
        uri, name = self.settings.registry_uri, self.settings.registered_model
        sources = {}
        for alias in (CHAMPION, CHALLENGER):
            found = registry.resolve(uri, name, alias)
            if found is not None:
                path = registry.download_bundle(uri, found, cache)
                sources[alias] = Source(path, found.version)
        if CHAMPION not in sources:
            raise SettingsError(
                f"the registry has no '{CHAMPION}' for model {name}: register one with "
                "`rakuten-classifier register --alias champion`"
            )
        return sources

    def _local_sources(self) -> dict[str, Source]:
        sources = {CHAMPION: Source(Path(self.settings.bundle))}
        if self.settings.challenger_bundle is not None:
            sources[CHALLENGER] = Source(Path(self.settings.challenger_bundle))
        return sources

    def sources(self) -> dict[str, Source]:
        """Where each variant's bundle is now (registry calls and downloads: blocking)."""
        if self.settings.model_source == "registry":
            return self._registry_sources()
        return self._local_sources()

    async def _serve(self, variant: str, source: Source) -> ServedModel:
        bundle = self.given.get(variant) or await asyncio.to_thread(load_bundle, source.path)
        predictor = Predictor(bundle, self.metrics, self.settings.max_pending, variant)
        await predictor.start()
        return ServedModel(variant, bundle, predictor, source)

    async def load(self) -> None:
        """The first load. A registry that cannot be reached is not fatal when the local bundle
        exists: the API serves it and picks up the registry at the next reload."""
        try:
            if self.given:
                sources = {variant: Source(bundle.path) for variant, bundle in self.given.items()}
            else:
                sources = await asyncio.to_thread(self.sources)
        except SettingsError:
            raise
        except Exception as error:  # the registry's server or network: MlflowException, OSError
            if self.settings.model_source != "registry" or not Path(self.settings.bundle).exists():
                raise
            logger.error(
                "registry unreachable (%s): serving the local bundle %s until it is back",
                type(error).__name__,
                self.settings.bundle,
            )
            self.metrics.registry_up.set(0)
            sources = self._local_sources()
        for variant, source in sources.items():
            self.models[variant] = await self._serve(variant, source)
            self._record(self.models[variant])
        if self.settings.mode != "off" and CHALLENGER not in self.models:
            logger.warning(
                "mode %s without a challenger: the champion answers alone", self.settings.mode
            )

    async def reload(self) -> dict[str, object]:
        """Look again and swap in the variants whose bundle changed."""
        async with self._lock:
            try:
                sources = await asyncio.to_thread(self.sources)
            except Exception as error:  # as in load(): the registry is unreachable
                self.metrics.reloads.labels("failed").inc()
                self.metrics.registry_up.set(0)
                logger.error("model reload failed (%s): %s", type(error).__name__, error)
                raise
            self.metrics.registry_up.set(1)
            changed = []
            for variant in (CHAMPION, CHALLENGER):
                current = self.models.get(variant)
                source = sources.get(variant)
                if source is None:
                    if current is not None:
                        self.models.pop(variant)
                        self._forget(current)
                        await current.predictor.stop()
                        changed.append(variant)
                    continue
                new_bundle_version = await asyncio.to_thread(_bundle_version, source.path)
                if current is not None and current.version == new_bundle_version:
                    continue
                replacement = await self._serve(variant, source)
                self.models[variant] = replacement  # new requests go to it from here on
                self._record(replacement)
                changed.append(variant)
                if current is not None:
                    self._forget(current)
                    await current.predictor.stop()  # after the requests it already has
                logger.info(
                    "%s is now %s (%s)", variant, replacement.version, replacement.source.describe()
                )
            self.metrics.reloads.labels("changed" if changed else "unchanged").inc()
            return {"changed": changed, "models": [m.describe() for m in self.models.values()]}

    async def stop(self) -> None:
        for model in list(self.models.values()):
            await model.predictor.stop(drain_seconds=5.0)

    def _record(self, model: ServedModel) -> None:
        self.metrics.model.labels(
            model.variant, model.version, model.source.registry_version or ""
        ).set(1)

    def _forget(self, model: ServedModel) -> None:
        self.metrics.model.remove(model.variant, model.version, model.source.registry_version or "")


def _bundle_version(path: Path) -> str:
    """A bundle's version from its manifest, without loading its models."""
    return read_json(Path(path) / MANIFEST_JSON)["model_version"]
