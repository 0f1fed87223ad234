"""The study: config defaults and validation (`config`), the generated schema (`schema`), the
grid and its paths (`grid`), and disk use (`storage`)."""

from quantunlearn.study.config import ConfigError
from quantunlearn.study.grid import Study, load_study, load_study_file

__all__ = ["ConfigError", "Study", "load_study", "load_study_file"]
