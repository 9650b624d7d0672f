{{/* an alert's text with `${param}`, `${param|percent}` (x100) and `${param|minutes}` (seconds / 60) replaced:
dict "name" ALERT "text" TEXT "params" PARAMS; an unknown `${...}` fails the render naming the alert */}}
{{- define "astrobio.alertText" -}}
{{- $text := toString .text -}}
{{- range $key, $value := .params -}}
{{- $text = replace (printf "${%s|percent}" $key) (toString (mulf $value 100)) $text -}}
{{- $text = replace (printf "${%s|minutes}" $key) (toString (div (int $value) 60)) $text -}}
{{- $text = replace (printf "${%s}" $key) (toString $value) $text -}}
{{- end -}}
{{- if regexMatch "\\$\\{[^}]*\\}" $text -}}
{{- fail (printf "monitoring.prometheusRule.alerts.%s: no parameter for %s" .name (regexFind "\\$\\{[^}]*\\}" $text)) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* one alerting rule: dict "name" NAME "alert" ENTRY "params" PARAMS "rule" .Values.monitoring.prometheusRule */}}
{{- define "astrobio.alertRule" -}}
{{- $a := .alert -}}
{{- $text := dict "name" .name "params" .params -}}
- alert: {{ .name }}
  expr: {{ include "astrobio.alertText" (merge (dict "text" $a.expr) $text) | quote }}
  {{- with $a.for }}
  for: {{ . }}
  {{- end }}
  labels:
    severity: {{ $a.severity }}
    {{- with .params.source }}
    source: {{ . }}
    {{- end }}
    {{- with $a.labels }}{{ toYaml . | nindent 4 }}{{ end }}
    {{- with .rule.additionalRuleLabels }}{{ toYaml . | nindent 4 }}{{ end }}
  annotations:
    summary: {{ include "astrobio.alertText" (merge (dict "text" $a.summary) $text) | quote }}
    description: {{ include "astrobio.alertText" (merge (dict "text" $a.description) $text) | quote }}
    runbook_url: {{ .rule.runbookUrl }}#{{ default (lower .name) $a.runbookAnchor }}
    {{- with .rule.additionalRuleAnnotations }}{{ toYaml . | nindent 4 }}{{ end }}
{{- end -}}
