{{/* PromQL for "counter {metric} rose within {window}", including a series that first appeared above zero */}}
{{- define "astrobio.counterRose" -}}
(increase({{ .metric }}[{{ .window }}]) > 0) or ({{ .metric }} > 0 unless {{ .metric }} offset {{ .window }})
{{- end -}}
