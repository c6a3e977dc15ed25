"""The registry of data sets: where each comes from, which raw files it has, how it is processed.

Specs are plain data; the preprocessing function is named by a dotted path and imported only
when it runs, so that listing data sets stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from prlbench.registry import Registry

DATASETS: Registry["DatasetSpec"] = Registry("data set")
DEFAULT_DATASET = "synthetic"  # what runs when no data set is named: generated, no download


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    display_name: str  # in tables and plots: "AliExpress-NL"
    description: str
    landing_page: str | None
    # The files a user fetches by hand (the archive names on the landing page).
    raw_files: tuple[str, ...]
    # "module:function" that turns a source into the Parquet cache.
    preprocessor: str
    # A public direct URL, where one exists (None: a login is needed, see `obtain`).
    url: str | None = None
    # How to obtain the raw files, in words (printed by `prlbench download NAME`).
    obtain: str = ""
    # Keyword arguments passed to the preprocessor (e.g. the AliExpress country).
    options: dict = field(default_factory=dict)
    # True: generated locally by its preprocessor (no raw files, no source, nothing to download),
    # so it can be built on first use; False: downloaded and preprocessed by the user.
    generated: bool = False
    # The cache column holding each row's group (search / session): validation takes whole
    # groups and GAUC averages over them. Where a source has none (Ali-CCP's processed CSVs) the
    # cache fills it with row numbers and its manifest says "has_groups": false.
    group_column: str = "search_id"
    # The model size preset when none is asked for: the paper's sizes on real data, CPU sizes
    # on generated data (which exists to run in minutes).
    default_preset: str = "paper"
    # What `prlbench ls datasets` states where known (None / "": not stated): the licence, the
    # download's size in bytes, and whether a login is needed to fetch it.
    licence: str = ""
    size_bytes: int | None = None
    needs_login: bool | None = None
    # The md5 published for the archive (KuaiRand's README): a download, --url mirror or --from
    # file of it must match, else nothing is kept.
    md5: str | None = None

    def preprocess_fn(self) -> Callable:
        module, func = self.preprocessor.split(":")
        return getattr(importlib.import_module(module), func)


def _register(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


_TIANCHI = (
    "Log in at the landing page (a free Tianchi account), accept the licence and download the "
    "files named below; MTReclib's processed CSVs (Google Drive / Baidu links in its README) "
    "are accepted too."
)

for _country in ("nl", "es", "fr", "us"):
    _up = _country.upper()
    _register(
        DatasetSpec(
            name=f"aliexpress_{_country}",
            display_name=f"AliExpress-{_up}",
            description=f"AliExpress search logs, {_up}: clicks and purchases, 16 categorical + "
            "63 numerical features",
            landing_page="https://tianchi.aliyun.com/dataset/74690",
            raw_files=(f"aliexpress_{_up}_datasets.zip",),
            preprocessor="prlbench.data.aliexpress:preprocess_aliexpress",
            obtain=_TIANCHI,
            options={"country": _country},
        )
    )

_register(
    DatasetSpec(
        name="aliccp",
        display_name="Ali-CCP",
        description="Ali-CCP (Alibaba Click and Conversion Prediction, the ESMM data): "
        "~84 M impressions, 18 sparse fields",
        landing_page="https://tianchi.aliyun.com/dataset/408",
        raw_files=(
            "sample_skeleton_train.csv",
            "common_features_train.csv",
            "sample_skeleton_test.csv",
            "common_features_test.csv",
        ),
        preprocessor="prlbench.data.aliccp:preprocess_aliccp",
        obtain=(
            "Log in at the landing page (a free Tianchi account), accept the licence and "
            "download the sample_skeleton / common_features files (.tar.gz archives are unpacked "
            "on import); a processed CSV folder (train.csv, val.csv, test.csv with click, purchase "
            "and the field columns) is accepted too."),
    )
)

_register(
    DatasetSpec(
        name="synthetic",
        display_name="Synthetic",
        description="Built-in default: generated with the AliExpress schema, latent relevance "
        "and noise clicks; no download",
        landing_page=None,
        raw_files=(),
        preprocessor="prlbench.data.synthetic:preprocess_synthetic",
        obtain="Generated locally by `prlbench preprocess synthetic`; nothing to download.",
        generated=True,
        default_preset="small",
    )
)

_register(
    DatasetSpec(
        name="kuairand_pure",
        display_name="KuaiRand-Pure",
        description="KuaiRand-Pure (Kuaishou short-video logs, CIKM 2022): clicks and likes "
        "(--conversion), 35 categorical + 6 numerical features, split by date, plus a "
        "random-exposure test split",
        landing_page="https://zenodo.org/records/10439422",
        raw_files=("KuaiRand-Pure.tar.gz",),
        preprocessor="prlbench.data.kuairand:preprocess_kuairand",
        url="https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz",
        obtain="A public download, no login or form: prlbench download kuairand_pure fetches it "
        "(https://github.com/chongminggao/KuaiRand describes it); a mirror (--url) or a copy "
        "fetched by hand (--from) is checked against the same published md5.",
        group_column="user_id",
        licence="CC BY-SA 4.0",
        size_bytes=47_432_272,
        needs_login=False,
        md5="0820331067a3784d9691136f772b35a7",
        # Not one of the paper's data sets, so no paper sizes to match: the CPU sizes make the
        # first real table a laptop job (--preset paper asks for the paper's sizes).
        default_preset="small",
    )
)
