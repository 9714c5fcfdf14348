"""Source text that reproducer scripts embed (they need only torch and numpy, not normspec)."""

# The comparison both reproducer runners (report.RUNNER, distributed.REPRODUCER_RUNNER) embed.
COMPARE_TO_SPEC = '''
def compare_to_spec(values, expect):
    """What differs from the float64 spec by more than the tolerance model's bound."""
    problems = []
    for name, (expected, bound) in expect.items():
        if name not in values:
            problems.append(f"{name} was not returned")
            continue
        err = np.abs(values[name] - expected)
        bad = ~(err <= bound) & ~(np.isnan(expected) & np.isnan(values[name]))
        if bad.any():
            i = np.unravel_index(int(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0))), expected.shape)
            problems.append(f"{name}{list(map(int, i))}={values[name][i]!r}, but the float64 spec gives "
                            f"{expected[i]!r} ± {bound[i]:.3g} ({int(bad.sum())} of {bad.size} out of bounds)")
    return problems
'''
