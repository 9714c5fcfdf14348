"""Every BatchNorm/LayerNorm property rejects a realistic wrong implementation and accepts the
reference backends (numpy, torch:cpu, and the bug factory with every bug switched off)."""
import pytest
from bugs import BUGS, buggy_backend, correct_variant_backend

from normspec.impls.base import available_backends
from normspec.matrix import judge
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm

# Which property is meant to catch which seeded bug (others may catch it too).
CATCHES = {
    ("batch_norm", "unbiased_variance_in_normalization"): ["forward_matches_spec", "output_moments",
                                                           "train_equals_eval_on_batch_stats"],
    ("batch_norm", "eps_outside_sqrt"): ["scale_invariance", "forward_matches_spec"],
    ("batch_norm", "one_pass_variance"): ["ill_conditioned_inputs", "shift_invariance"],
    ("batch_norm", "statistics_per_sample"): ["forward_matches_spec", "output_moments"],
    ("batch_norm", "eval_uses_batch_stats"): ["eval_is_per_channel_affine", "fold_into_preceding_layer"],
    ("batch_norm", "momentum_flipped"): ["running_var_convention", "forward_matches_spec"],
    ("batch_norm", "running_var_biased"): ["running_var_convention", "cumulative_moving_average"],
    ("batch_norm", "momentum_none_as_fixed"): ["cumulative_moving_average"],
    ("batch_norm", "folded_shift"): ["constant_group_gives_beta"],
    ("batch_norm", "input_modified_in_place"): ["inputs_unmodified"],
    ("batch_norm", "no_error_on_single_value"): ["single_value_per_channel_raises"],
    ("batch_norm", "nondeterministic"): ["deterministic"],
    ("batch_norm", "ignores_strides"): ["layout_consistency"],
    ("batch_norm", "stats_from_first_samples"): ["batch_permutation_equivariance"],
    ("batch_norm", "statistics_detached_in_backward"): ["backward_matches_spec", "gradient_orthogonality"],
    ("layer_norm", "last_dim_only"): ["forward_matches_spec", "output_moments"],
    ("layer_norm", "statistics_over_batch"): ["batch_independence"],
    ("layer_norm", "eps_outside_sqrt"): ["scale_invariance"],
    ("layer_norm", "one_pass_variance"): ["ill_conditioned_inputs", "shift_invariance"],
    ("layer_norm", "folded_shift"): ["constant_group_gives_beta"],
    ("layer_norm", "bias_added_twice"): ["forward_matches_spec"],
    ("layer_norm", "statistics_detached_in_backward"): ["backward_matches_spec", "gradient_orthogonality"],
    # issue 19: the reach draws (long rows, block tails, half-precision counts) and layouts
    ("batch_norm", "backward_reads_dy_in_x_layout"): ["mixed_layouts_match_spec"],
    ("batch_norm", "variance_in_half_precision"): ["reach_forward_matches_spec"],
    ("layer_norm", "tail_block_dropped"): ["reach_forward_matches_spec"],
    ("layer_norm", "one_pass_variance_above_4096"): ["reach_forward_matches_spec"],
    ("layer_norm", "count_in_input_dtype"): ["reach_forward_matches_spec"],
    ("layer_norm", "ignores_storage_offset"): ["forward_matches_spec", "layout_consistency"],
    ("batch_norm", "nan_running_stats_on_empty_batch"): ["empty_input_gives_empty_output"],
    ("batch_norm", "output_buffer_reused"): ["outputs_not_aliased"],
    ("layer_norm", "output_buffer_reused"): ["outputs_not_aliased"],
}
FOUNDATION = ("batch_norm", "layer_norm")


def test_every_seeded_bug_has_a_catching_property():
    assert {(n, b) for n in BUGS for b in BUGS[n]} == set(CATCHES)


# The modules of generic properties (applied by trait); family modules and identities are tested elsewhere.
GENERIC_MODULES = ("agreement", "statistics", "invariance", "inference", "robustness", "hygiene")


def _generic_applicable(norm: str) -> set[str]:
    record = get_norm(norm)
    return {name for name, p in PROPERTIES.items()
            if p.applies(record) and p.func.__module__.rsplit(".", 1)[-1] in GENERIC_MODULES}


def _shown_on(norm: str) -> set[str]:
    """Properties that CATCHES says reject a seeded bug of `norm`."""
    return {p for (n, _), props in CATCHES.items() if n == norm for p in props}


def test_every_generic_module_contributes_properties():
    """The module filter names real modules: a renamed one would silently drop its properties."""
    modules = {p.func.__module__.rsplit(".", 1)[-1] for p in PROPERTIES.values()}
    assert set(GENERIC_MODULES) <= modules, f"no properties from {sorted(set(GENERIC_MODULES) - modules)}"
    for norm in FOUNDATION:
        assert _generic_applicable(norm), f"no generic property applies to {norm}"


@pytest.mark.parametrize("norm,bug,prop", [(n, b, p) for (n, b), props in CATCHES.items() for p in props])
def test_a_catching_property_applies_to_its_norm(norm, bug, prop):
    """A property can only be shown on a norm it applies to (else it is skipped there, not failed)."""
    assert prop in PROPERTIES, f"CATCHES names an unknown property {prop}"
    assert PROPERTIES[prop].applies(get_norm(norm)), f"{prop} does not apply to {norm}, yet is listed for {bug}"


@pytest.mark.parametrize("norm", FOUNDATION)
def test_a_property_of_this_norm_only_is_shown_on_this_norm(norm):
    """A generic property that applies to this norm and not to the other foundation norm must reject
    a seeded bug of this norm: no other norm can demonstrate it."""
    others = set().union(*(_generic_applicable(n) for n in FOUNDATION if n != norm))
    own = _generic_applicable(norm) - others
    missing = own - _shown_on(norm)
    assert not missing, f"no seeded {norm} bug demonstrates {sorted(missing)} (they apply to {norm} only)"


def test_a_property_of_both_norms_is_shown_on_one_of_them():
    """A generic property that applies to BatchNorm and LayerNorm alike is shown on whichever has the bug."""
    both = set.intersection(*(_generic_applicable(n) for n in FOUNDATION))
    shown = set().union(*(_shown_on(n) for n in FOUNDATION))
    missing = both - shown
    assert not missing, f"no seeded bug of {' or '.join(FOUNDATION)} demonstrates {sorted(missing)}"


@pytest.mark.parametrize("norm,bug,prop", [(n, b, p) for (n, b), props in CATCHES.items() for p in props])
def test_property_rejects_seeded_bug(norm, bug, prop):
    verdict = run_property(PROPERTIES[prop], get_norm(norm), buggy_backend(norm, bug), "ci")
    assert verdict.status == "failed", f"{prop} did not catch {norm}:{bug} ({verdict.status}: {verdict.reason})"
    assert verdict.draws, "a failure must come with its minimal counterexample"


def _reference_backends():
    backends, _ = available_backends(["numpy", "torch:cpu"])
    return list(backends.values())


@pytest.mark.parametrize("norm", FOUNDATION)
@pytest.mark.parametrize("backend", _reference_backends(), ids=lambda b: b.name)
def test_reference_backends_pass_or_fail_only_as_documented(norm, backend):
    record = get_norm(norm)
    bad = []
    for name in PROPERTIES:
        v = judge(name, record, backend, "ci")
        if v.status == "failed":
            bad.append(f"{name}: {v.message}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("norm", FOUNDATION)
def test_bug_factory_without_bugs_passes_everything(norm):
    backend = correct_variant_backend(norm)
    record = get_norm(norm)
    bad = [f"{n}: {v.message}" for n in PROPERTIES
           if (v := run_property(PROPERTIES[n], record, backend, "ci")).status == "failed"]
    assert not bad, "\n".join(bad)
