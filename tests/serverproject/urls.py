from django.urls import path

from . import views

urlpatterns = [
    path("load/", views.load),
    path("validate/", views.validate),
    path("mode/", views.mode),
    path("write/", views.write),
    path("async/load/", views.load_async),
    path("async/validate/", views.validate_async),
    path("async/mode/", views.mode_async),
]

handler500 = views.server_error
