Rails.application.routes.draw do
  resources :signups, only: [:create]
end
