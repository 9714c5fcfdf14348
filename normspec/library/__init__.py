"""The library layer: what norm records and properties both need, and nothing above them.

`case` (the unit of work), `conditioning` (what the tolerance model needs about a case),
`strategies` (the Hypothesis strategies the records draw cases with) and `tolerance` (the one
error model). Modules here import only `normspec.spec` and each other.
"""
