"""Typed experiment configs: the dataclass schema, the presets per dataset (read from the data
registry), the paper and release protocols, the validation rules, and overrides from the
command line with serialisation. Imports core/, data/ and the light preset tables of nets/;
importing it loads no torch."""
