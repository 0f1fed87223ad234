from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.data.utility import check_utility_data, utility_sources
    from quantunlearn.io import write_json

    evaluation = dict(snakemake.params.evaluation)
    pins = Pins.read(snakemake.input.pins)  # hub datasets: their pinned snapshots
    sources = utility_sources(evaluation)
    named = evaluation.get("utility") or []
    evaluation["utility_data"] = {name: pins.local(sources[name]) for name in named}
    # loads every configured utility source and checks its rows; raises naming the first bad one
    write_json(check_utility_data(evaluation), snakemake.output[0])
