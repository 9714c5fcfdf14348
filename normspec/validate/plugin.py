"""pytest plugin (entry point `pytest11`): run `normspec validate` inside your own test suite.

Either on the command line, which adds one test per target:

    pytest --normspec-target mypkg.norms:FusedLayerNorm [--normspec-as layer_norm] [--normspec-profile ci]
           [--normspec-ctor normalized_shape=dim,eps=eps --normspec-axes last ...]   (a contract)

or from a test, through the `normspec_validate` fixture (same profiles, same verdicts):

    def test_my_layer_norm(normspec_validate):
        normspec_validate("mypkg.norms:FusedLayerNorm")          # fails the test with the report

Reproducers of failures are written under pytest's temporary directory.
"""
from __future__ import annotations

import pytest

from normspec.properties.core import PROFILES


def pytest_addoption(parser):
    group = parser.getgroup("normspec", "normspec validate")
    group.addoption("--normspec-target", action="append", default=[], metavar="TARGET",
                    help="validate TARGET (package.module:attr or path/to/file.py:attr) as a test; repeatable")
    group.addoption("--normspec-as", default=None, metavar="NORM", help="the norm the targets implement")
    group.addoption("--normspec-profile", default=None, choices=list(PROFILES),
                    help="Hypothesis profile for validation (default: validate's default)")
    group.addoption("--normspec-dtype", action="append", default=None, help="only these dtypes (the contract's)")
    from normspec.commands.validate import add_contract_options

    add_contract_options(group.addoption, "--normspec-")


def _contract(config):
    """The contract the --normspec-* options declare (None if none)."""
    from normspec.validate.contract import ContractError, from_options

    def get(name):
        return config.getoption(f"--normspec-{name}")

    try:
        return from_options(ctor=get("ctor"), conventions=get("convention"), axes=get("axes"), modes=get("modes"),
                            forward_only=get("forward-only"), affine=get("affine"), no_eps_none=get("no-eps-none"),
                            dtypes=get("dtype"), compute=get("compute"), ranks=get("ranks"),
                            source="pytest options")
    except ContractError as exc:
        raise pytest.UsageError(f"normspec validate: {exc}") from None


class ValidationFailed(AssertionError):
    pass


def _run(target, tmp_path, *, profile=None, as_norm=None, **kwargs):
    from rich.console import Console

    from normspec.validate import DEFAULT_PROFILE, UsageError, validate
    from normspec.validate.report import print_report, write_reproducers

    try:
        result = validate(target, as_norm=as_norm, profile=profile or DEFAULT_PROFILE, **kwargs)
    except (UsageError, ValueError) as exc:
        raise pytest.UsageError(f"normspec validate: {exc}") from None
    reproducers = write_reproducers(result, tmp_path)
    if not result.accepted:
        console = Console(record=True, width=120, force_terminal=False)
        print_report(console, result, reproducers)
        raise ValidationFailed(console.export_text())
    return result


@pytest.fixture
def normspec_validate(request, tmp_path):
    """A function validate(target, **options) -> ValidationResult that fails the test if rejected."""
    config = request.config

    def run(target, **kwargs):
        kwargs.setdefault("profile", config.getoption("--normspec-profile"))
        kwargs.setdefault("as_norm", config.getoption("--normspec-as"))
        kwargs.setdefault("contract", _contract(config))
        return _run(target, tmp_path, **kwargs)

    return run


class ValidateItem(pytest.Item):
    def __init__(self, *, target, **kwargs):
        super().__init__(**kwargs)
        self.target = target

    def runtest(self):
        config = self.config
        tmp = config._tmp_path_factory.mktemp("normspec-validate") if hasattr(config, "_tmp_path_factory") else None
        if tmp is None:
            import tempfile
            from pathlib import Path

            tmp = Path(tempfile.mkdtemp(prefix="normspec-validate-"))
        _run(self.target, tmp, profile=config.getoption("--normspec-profile"),
             as_norm=config.getoption("--normspec-as"), contract=_contract(config))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ValidationFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"normspec validate {self.target}"


def pytest_collection_modifyitems(session, config, items):
    for target in config.getoption("--normspec-target") or []:
        items.append(ValidateItem.from_parent(session, name=f"normspec_validate[{target}]", target=target))
