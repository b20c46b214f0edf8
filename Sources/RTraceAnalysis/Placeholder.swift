import RTrace
