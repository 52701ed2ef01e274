# Builds the regent binary and a small runtime image.
#   docker build -t regent:dev .
# (No Docker engine exists on the development machines of this project: tests parse this
# file and the deploy/ files and check what matters, they do not build or run them.)
FROM swift:6.2-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev zlib1g-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Plugins ./Plugins
COPY sql ./sql
COPY Tests ./Tests
RUN swift build -c release --product regent --static-swift-stdlib \
 && cp "$(swift build -c release --show-bin-path)/regent" /regent

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 zlib1g ca-certificates curl tzdata \
 && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 --no-create-home regent
COPY --from=build /regent /usr/local/bin/regent
USER 10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/regent"]
CMD ["serve", "--http-address", "0.0.0.0:8080", "--log-format", "json", "--shutdown-timeout", "20s"]
