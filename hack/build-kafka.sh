#!/usr/bin/env bash
# Fetches the jars of a single-node Kafka broker (org.apache.kafka:kafka_2.13, with slf4j-simple for
# readable logs) with Maven, from a throw-away pom, and caches them outside the repo in a folder keyed by
# the versions. Prints that folder's libs/ path; a warm run only checks the stamp file.
#
# Java and Maven come with the machine; Maven resolves from its configured repositories (~/.m2).
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
SLF4J_VERSION=${SLF4J_VERSION:-1.7.36}
DEPENDENCY_PLUGIN_VERSION=3.8.1

cache_root=${MLW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlworkflow-operator}
dest="$cache_root/kafka-${KAFKA_VERSION}_slf4j-${SLF4J_VERSION}"
stamp="$dest/.complete"

if [ -f "$stamp" ]; then echo "$dest/libs"; exit 0; fi

mkdir -p "$cache_root"
# Serialise concurrent fetches (two test sessions, a benchmark beside `make test`): the second waits.
exec 9>"$cache_root/.kafka-build.lock"
flock 9
if [ -f "$stamp" ]; then echo "$dest/libs"; exit 0; fi

work=$(mktemp -d "$cache_root/.kafka-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log() { echo "[build-kafka $(date +%T)] $*" >&2; }

cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mlworkflow</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>${SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>${DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
POM

log "kafka_2.13 $KAFKA_VERSION, slf4j-simple $SLF4J_VERSION"
mvn -q -B -Dstyle.color=never -f "$work/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$work/libs" >&2
ls "$work/libs"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null || { log "kafka_2.13 jar missing after fetch"; exit 1; }
rm -f "$work/pom.xml"
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
touch "$stamp"
log "done: $dest/libs ($(ls "$dest/libs" | wc -l) jars, $(du -sh "$dest/libs" | cut -f1))"
echo "$dest/libs"
