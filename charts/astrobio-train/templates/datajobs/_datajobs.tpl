{{/* the enabled data jobs as YAML {name: merged values}, source defaulting to the entry's name */}}
{{- define "astrobio.enabledDataJobs" -}}
{{- $out := dict -}}
{{- range $name, $entry := .Values.dataJobs -}}
{{- $job := include "astrobio.mergeEntry" (dict "defaults" $.Values.dataJobDefaults "entry" $entry) | fromYaml -}}
{{- if $job.enabled -}}
{{- if not $job.schedule -}}
{{- fail (printf "dataJobs.%s.schedule is required" $name) -}}
{{- end -}}
{{- $_ := set $job "source" (default $name $job.source) -}}
{{- $_ := set $out $name $job -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
