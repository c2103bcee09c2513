"""Check all of params.yaml, and every profile applied on top of it, before any other stage runs.

    python -m stages.params --profiles profiles --out reports/params.json

Every other stage depends on reports/params.json, so DVC runs this stage first whenever a param
changed: a typo (`dvc exp run -S method=fooo`) stops `dvc repro` and `dvc exp run` here, with one
line naming the key, before DVC deletes any other stage's outputs to run it again. The file lists
what was checked and changes only when a section or a profile is added or removed, so a valid
change still re-runs only the stages that read it.
"""

from tunelab.core import stage
from tunelab.core.config import (
    ConfigError,
    Study,
    check_sections,
    load_section,
    read_params,
)
from tunelab.core.io import write_json
from tunelab.core.models import BaseSettings
from tunelab.core.profiles import applied
from tunelab.eval.evaluate import EvaluateSettings
from tunelab.sandbox.protections import SandboxSettings
from tunelab.synth.curation import CurateSettings
from tunelab.synth.synthesis import GenerateSettings
from tunelab.track.tracking import TrackingSettings
from tunelab.train.align import AlignSettings
from tunelab.train.compress import CompressSettings
from tunelab.train.peft_compare import PeftCompareSettings
from tunelab.train.preference import PreferenceSettings
from tunelab.train.rewardmodel import RewardModelSettings
from tunelab.train.sft import SFTSettings

# Each section of params.yaml and the typed settings its stage reads it into.
SETTINGS = {
    "base": BaseSettings, "generate": GenerateSettings, "curate": CurateSettings, "sft": SFTSettings,
    "peft_compare": PeftCompareSettings, "preference": PreferenceSettings, "reward": RewardModelSettings,
    "align": AlignSettings,
    "compress": CompressSettings, "evaluate": EvaluateSettings, "tracking": TrackingSettings,
    "sandbox": SandboxSettings,
}


def check_params(params: dict) -> None:
    """Raise ConfigError naming the first key of `params` that no stage would accept."""
    check_sections(params, stage.SECTIONS)
    Study(params.get("method"), params)
    for name, cls in SETTINGS.items():
        load_section(params, name, cls)


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "profiles", "out").parse_args(argv)
    params = read_params(args.params)
    check_params(params)
    profiles = sorted(args.profiles.glob("*.yaml"))
    for path in profiles:
        try:
            check_params(applied(read_params(path), params))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    write_json(args.out, {"sections": sorted(stage.SECTIONS), "profiles": [path.name for path in profiles]})


if __name__ == "__main__":
    stage.run(main)
