"""The two front ends, `@opero` and `@opmap`: they validate options and hand the function
to the pipeline builder (`opero._pipeline`) or the map machinery (`opero._maps`). Their
types (`OperoFunction`, `Mapper`, `AsyncMapper`) say what a decorated function offers."""
