from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.data.utility import check_utility_data
    from quantunlearn.io import write_json

    # loads every configured utility source and checks its rows; raises naming the first bad one
    write_json(check_utility_data(snakemake.params.evaluation), snakemake.output[0])
