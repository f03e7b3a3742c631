"""`python -m lmm.training.resume <run>` replays only plain `key=value` overrides from the run folder: anything that
could make Hydra instantiate or load what the file chooses (`_target_`, an interpolation, a Hydra key, a flag, a
config group value that is a path, a package override elsewhere) is refused, naming the file and the override."""

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from lmm.training.resume import resume_command

SAFE = ["+experiment=row0_llava", "scale=tiny", "data.twin.n_pretrain=32", "stages.finetune.lr=2e-5",
        "run_stages=[pretrain,finetune]", "strategy@stages.finetune.strategy=fsdp", "model/llm=vicuna_13b_v15",
        "data.finetune.shards=https://data.example.org/mix665k", "~stages.finetune.lora", "logger.tags.note='a b'"]


def run_folder(tmp_path, overrides, own=False):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / (".hydra/overrides.yaml" if not own else "overrides.yaml")).write_text(yaml.safe_dump(overrides))
    return run


def test_plain_overrides_are_replayed_with_the_users_extras(tmp_path):
    run = run_folder(tmp_path, [*SAFE, f"hydra.run.dir={tmp_path}/elsewhere", "resume=auto", "overwrite=true"])
    cmd = resume_command(run, ["trainer.devices=4", "+callbacks.mine={_target_:my.Callback}"])
    # the folder's overrides, without its hydra.run.dir / resume / overwrite; then ours; then the user's, as typed
    assert cmd[2:] == [*SAFE, f"hydra.run.dir={run.resolve()}", "resume=auto", "trainer.devices=4",
                       "+callbacks.mine={_target_:my.Callback}"]


def test_the_runs_own_copy_of_its_overrides_wins(tmp_path):
    run = run_folder(tmp_path, ["seed=1"])
    (run / "overrides.yaml").write_text(yaml.safe_dump(["seed=7"]))  # written by start_run; Hydra rewrites .hydra/
    assert resume_command(run)[2] == "seed=7"


@pytest.mark.parametrize("override, why", [
    ("+callbacks.evil={_target_:pathlib.Path.write_text,self:/tmp/victim,data:pwned}", "_target_"),
    ("callbacks.evil._target_=builtins.exec", "_target_"),
    ("+callbacks.evil={_call_:true}", "_call_"),
    ("+trainer._partial_=true", "_partial_"),
    ("+x={_args_:[1]}", "_args_"),
    ("+x={_recursive_:false}", "_recursive_"),
    ("+x={_convert_:all}", "_convert_"),
    ("model.llm.trust_remote_code=true", "trust_remote_code"),
    ("+callbacks.evil=${oc.decode:'{${a}${b}: os.system}'}", "interpolation"),
    ("model/../../tmp=evil", "'..'"),
    ("hydra.searchpath=[file:///tmp/evil]", "hydra"),
    ("+hydra.callbacks.x={y:1}", "hydra"),
    ("hydra/launcher=submitit_local", "hydra"),
    ("+logger@hydra.callbacks.x=mlflow", "hydra"),
    ("+logger@callbacks.x=mlflow", "package"),
    ("+experiment=../../../tmp/evil", "option name"),
    ("model/llm=/tmp/evil", "option name"),
    ("scale=tiny,paper", "option name"),
    ("--config-dir=/tmp/evil", "flag"),
    ("-cd", "flag"),
    ("-m", "flag"),
    ("seed", "key=value"),
    ("se ed=1", "key"),
    ("x={a:[1,{b:2}", "cannot parse"),
])
def test_a_crafted_override_is_refused_naming_it(tmp_path, override, why):
    run = run_folder(tmp_path, ["seed=1", override])
    with pytest.raises(SystemExit) as err:
        resume_command(run)
    msg = str(err.value)
    assert str(run / ".hydra" / "overrides.yaml") in msg and override in msg and why in msg, msg


@pytest.mark.parametrize("content", [b"{seed: 1}", b"- seed=1\n- [nested]\n", b"- 1\n", b"- seed=\xff\xfe\n", b"a: ["])
def test_an_overrides_file_that_is_not_a_list_of_strings_is_refused(tmp_path, content):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_bytes(content)
    with pytest.raises(SystemExit, match=r"overrides\.yaml.*(list of strings|not YAML|not UTF-8)"):
        resume_command(run)


def test_the_cli_refuses_before_anything_runs(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    run = run_folder(tmp_path, [f"+callbacks.evil={{_target_:pathlib.Path.write_text,self:{victim},data:pwned}}"])
    res = subprocess.run([sys.executable, "-m", "lmm.training.resume", str(run)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0 and "_target_" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert victim.read_text() == "intact" and "resuming:" not in res.stdout
